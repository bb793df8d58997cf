"""Registered models ready to serve: safe on inputs of any length, with a request schema.

Inputs longer than the context are truncated by the pyfunc model itself
(``mlflow.pyfunc.load_model(...).predict``, ``mlflow models serve``): a classifier keeps the start
of a text; a language model keeps the end of its prompt and adds at most ``context - 1`` tokens
(transformers' ``handle_long_generation="hole"``; ``gptops generate`` slides the window instead).
The signature and input example say what a JSON request looks like.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gpt.errors import RegistryError

#: Tokens a served language model adds when a request does not say (half the context if that is
#: less): "hole" truncation keeps the rest of the context for the end of the prompt.
MAX_DEFAULT_NEW_TOKENS = 64
#: The transformers tasks :func:`serving` knows.
TASKS = ("text-generation", "text-classification")


def default_new_tokens(context: int) -> int:
    """How many tokens a served language model with ``context`` positions adds by default."""
    return max(1, min(MAX_DEFAULT_NEW_TOKENS, context // 2))


@dataclass(frozen=True)
class Serving:
    """What the pyfunc flavor of a version is logged with."""

    model_config: dict[str, Any]  #: pipeline call arguments of every ``predict``
    signature: Any  #: ``mlflow.models.ModelSignature``: inputs, outputs and request params
    input_example: Any  #: stored as ``serving_input_example.json``


def serving(task: str, context: int) -> Serving:
    """How a ``task`` model with ``context`` positions answers ``predict`` and HTTP requests.

    A classifier truncates its input to the context. A language model keeps the last
    ``context - max_new_tokens`` prompt tokens (transformers' ``handle_long_generation="hole"``),
    adds :func:`default_new_tokens` greedily and returns only the continuation; a request's
    ``params`` may change ``max_new_tokens`` (below ``context``), sampling and
    ``return_full_text``.

    Raises:
        RegistryError: a task other than text-generation or text-classification.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    text = Schema([ColSpec("string")])
    if task == "text-classification":
        labels = Schema([ColSpec("string", "label"), ColSpec("double", "score")])
        return Serving({"truncation": True, "max_length": context},
                       ModelSignature(text, labels), ["A short text to label."])
    if task == "text-generation":
        # The defaults of temperature/top_k/top_p are generate()'s own: no warnings when greedy.
        gen: dict[str, Any] = {"max_new_tokens": default_new_tokens(context), "do_sample": False,
                               "temperature": 1.0, "top_k": 50, "top_p": 1.0,
                               "return_full_text": False}
        dtype = {bool: "boolean", int: "long", float: "double"}
        params = ParamSchema([ParamSpec(k, dtype[type(v)], v) for k, v in gen.items()])
        return Serving({"handle_long_generation": "hole", **gen},
                       ModelSignature(text, text, params),
                       (["Once upon a time"], {"max_new_tokens": min(4, gen["max_new_tokens"])}))
    raise RegistryError(f"task '{task}' has no serving setup; register a "
                        f"{' or '.join(TASKS)} model")


def _context(model: Any, tokenizer: Any) -> int:
    """Positions the model can see: ``n_positions``, or the tokenizer's limit when smaller."""
    cfg = model.config
    n = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
    if not n:
        raise RegistryError(f"{type(model).__name__} config names no context length "
                            "(n_positions); export the model with gpt.hf.to_hf_lm/to_hf_classifier")
    limit = tokenizer.model_max_length
    return int(min(n, limit)) if isinstance(limit, int) and 0 < limit < n else int(n)


def servable(model: Any, tokenizer: Any, task: str) -> tuple[Any, Any, int]:
    """``(model, tokenizer, context)`` as they are logged: safe on inputs of any length.

    The tokenizer (a copy: exports share theirs) carries ``model_max_length = context`` and
    truncates where the model needs it: a classifier keeps the start of a text, a language model
    the end of its prompt. A language model's generation config adds
    :func:`default_new_tokens` by default, so a stock ``transformers.pipeline`` on an exported
    folder stays inside the context for short prompts instead of its own default of 256.
    """
    context = _context(model, tokenizer)
    tok = copy.deepcopy(tokenizer)
    tok.model_max_length = context
    side = "left" if task == "text-generation" else "right"
    tok.truncation_side = tok.init_kwargs["truncation_side"] = side  # init_kwargs: saved
    if task == "text-generation":
        model.generation_config.max_new_tokens = default_new_tokens(context)
        if model.generation_config.pad_token_id is None and tok.pad_token_id is not None:
            model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, context


#: The classifiers' pyfunc loader (see its docstring), shipped inside each version.
PLAIN_TEXT = str(Path(__file__).with_name("gptops_pyfunc.py"))


def _save_plain_text(path: str, mlflow_model: Any, **kwargs: Any) -> None:
    """``mlflow.transformers.save_model``, then :mod:`gptops_pyfunc` as the pyfunc loader."""
    import mlflow

    mlflow.transformers.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors["python_function"]["loader_module"] = Path(PLAIN_TEXT).stem
    mlflow_model.save(os.path.join(path, "MLmodel"))


#: The transformers flavor (same name on the logged model) with that loader.
PLAIN_TEXT_FLAVOR = SimpleNamespace(__name__="mlflow.transformers", save_model=_save_plain_text)
