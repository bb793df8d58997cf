"""Builds ``gpt/data/clean/fineweb.json`` from the installed spaCy and datatrove (dev extra).

gptops states FineWeb's word-based rules without importing either at run time: the file holds
what they are made of (spaCy's English tokenizer: prefix, suffix, infix and URL patterns and its
special cases; datatrove's punctuation, stop words and C4 phrases; the sentencizer's sentence
punctuation). ``test_clean_words`` checks it against the installed libraries; regenerate with
``python -c "from tests.unit.fineweb_tables import write; write()"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TABLES = Path(__file__).resolve().parents[2] / "gpt" / "data" / "clean" / "fineweb.json"


def build() -> dict[str, Any]:
    """The tables, from the installed spaCy and datatrove."""
    from importlib.metadata import version

    import spacy
    from datatrove.pipeline.filters import c4_filters, gopher_quality_filter
    from datatrove.utils.text import PUNCTUATION
    from spacy.attrs import ORTH
    from spacy.pipeline import Sentencizer

    tok = spacy.blank("en").tokenizer
    return {
        "source": f"spaCy {spacy.__version__} (MIT) English tokenizer, datatrove "
                  f"{version('datatrove')} (Apache-2.0) filters; built by "
                  "tests/unit/fineweb_tables.py",
        "prefix": tok.prefix_search.__self__.pattern,
        "suffix": tok.suffix_search.__self__.pattern,
        "infix": tok.infix_finditer.__self__.pattern,
        "url": tok.url_match.__self__.pattern,
        "special": {k: [t[ORTH] for t in v] for k, v in sorted(tok.rules.items())},
        "punctuation": "".join(sorted(set(PUNCTUATION))),
        "sentence_punctuation": "".join(sorted(Sentencizer.default_punct_chars)),
        "stop_words": list(gopher_quality_filter.STOP_WORDS),
        "policy_phrases": list(c4_filters.POLICY_SUBSTRINGS),
        "citation": c4_filters.CITATION_REGEX.pattern,
    }


def write() -> None:
    """Rewrite the tables file."""
    TABLES.write_text(json.dumps(build(), ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
