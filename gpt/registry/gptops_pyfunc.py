"""The pyfunc loader of registered gptops classifiers: MLflow's transformers one, fed strings.

This file is shipped inside each classifier version (``code/``) and named as its pyfunc
``loader_module``, so ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` use it without
gptops installed; it imports only MLflow and pandas.

Why: MLflow's transformers pyfunc (3.17) turns a string column into ``[{0: text}, ...]`` and
then runs ``ast.literal_eval`` on every text, and a long text of plain words (``"word " * 5000``)
makes Python's parser raise ``MemoryError``, which it does not catch. Handing it the column as a
list of strings takes its plain-text path; everything else (truncation, output) is MLflow's.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.transformers import _load_pyfunc as _transformers_pyfunc


class PlainText:
    """MLflow's transformers pyfunc model, given a single text column as a list of strings."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        if isinstance(data, pd.DataFrame) and len(data.columns) == 1:
            texts = data.iloc[:, 0].tolist()
            if all(isinstance(t, str) for t in texts):
                data = texts
        return self._inner.predict(data, params=params)

    def __getattr__(self, name: str) -> Any:  # get_raw_model, model_config, ...
        if name == "_inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> PlainText:
    return PlainText(_transformers_pyfunc(path, model_config))
