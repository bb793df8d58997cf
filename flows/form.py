"""The Run form: the fields the Prefect UI's Run button shows for ``training_pipeline``.

One table (:data:`FIELDS`) gives each field's name, the params key it overrides, the help the
form shows and what else a set value selects. From it come the flow's typed parameters
(:func:`parameters`, types read from :class:`gpt.config.Params`), the values the form shows
(:func:`shown`) and the overrides a submitted form asks for (:func:`overrides`). Nothing here
reads a file when imported.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

from gpt.config import DEFAULT_PROFILE, Params, get_dotted, load_params
from gpt.errors import ConfigError

#: The pipeline flow's name (deployments are ``<FLOW_NAME>/<deployment>``).
FLOW_NAME = "training_pipeline"


def _count_or_auto(value: str) -> int | str:
    return int(value) if value.strip().isdigit() else value


@dataclass(frozen=True)
class Field:
    """One field of the form."""

    name: str  #: the flow parameter
    key: str  #: the params key it overrides
    help: str  #: what the form says about it
    selects: str = ""  #: an override that goes with a set (non-empty) value
    text: bool = False  #: shown as text, parsed back (a count or ``auto``)

    @property
    def type(self) -> Any:
        """The parameter's type: the params field's own (``int``, ``Literal[...]``...)."""
        if self.text:
            return str
        section, name = self.key.split(".")
        return Params.model_fields[section].annotation.model_fields[name].annotation

    def show(self, value: Any) -> Any:
        """A params value as the form shows it."""
        return str(value) if self.text else value

    def override(self, value: Any) -> list[str]:
        """The overrides a value given in the form asks for."""
        parsed = _count_or_auto(value) if self.text else value
        return [f"{self.key}={json.dumps(parsed)}", *([self.selects] if self.selects and value
                                                      else [])]


FIELDS = (
    Field("max_steps", "train.max_steps", "pretraining optimizer steps."),
    Field("learning_rate", "train.lr", "peak pretraining learning rate."),
    Field("finetune_steps", "finetune.max_steps", "classification fine-tuning steps."),
    Field("sft_steps", "sft.max_steps", "supervised fine-tuning (SFT) steps."),
    Field("lora_rank", "finetune.lora_rank", "0 = full fine-tuning; >0 = LoRA adapters of this "
          "rank."),
    Field("task_file", "finetune.task_path", "your own text,label file (.csv/.jsonl/.parquet) "
          "to fine-tune on; empty = the built-in package task.", selects="finetune.task=file"),
    Field("sft_file", "sft.task_path", "your own prompt,completion file for SFT; empty = the "
          "built-in docsummary task.", selects="sft.task=file"),
    Field("data_source", "data.source", "`builtin`, a glob of local files, or `hf:<dataset>`."),
    Field("base_model", "registry.base_model", "registered model name of the pretrained base."),
    Field("task_model", "registry.task_model", "registered model name of the classifier."),
    Field("sft_model", "registry.sft_model", "registered model name of the SFT model."),
    Field("processes", "launch.nproc_per_node", "training processes on the worker (pretrain, "
          "fine-tune, SFT): `auto` = one per GPU (1 without), or a count; more than 1 are "
          "started by torch's launcher.", text=True),
    Field("strategy", "launch.strategy", "`ddp` (a model per process) or `fsdp` (FSDP2 "
          "sharding, for large models)."),
    Field("eval_items", "evaluate.max_items", "the evaluation size: held-out SFT pairs "
          "generated and items per benchmark task (the built-in suite and `evaluate.benchmarks`); "
          "0 = all. Fewer = a faster evaluation, noisier scores."),
)


def shown(params: Params) -> dict[str, Any]:
    """The value each field shows for ``params``."""
    return {f.name: f.show(get_dotted(params, f.key)) for f in FIELDS}


def workspace_defaults(workdir: str | os.PathLike) -> dict[str, Any]:
    """What the form shows for a workspace: its params.yaml under the default profile (``{}``
    when it has none, or a broken one: the run then names the problem)."""
    path = os.path.join(workdir, "params.yaml")
    try:
        return {"profile": DEFAULT_PROFILE, **shown(load_params(path, DEFAULT_PROFILE))}
    except ConfigError:
        return {}


def parameters(defaults: dict[str, Any]) -> list[inspect.Parameter]:
    """The flow's parameters, one per field: typed, with ``defaults`` and the field's help."""
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                              default=pydantic.Field(defaults[f.name], description=f.help))
            for f in FIELDS]


def overrides(values: dict[str, Any], defaults: dict[str, Any],
              workspace: Callable[[], dict[str, Any]]) -> list[str]:
    """The overrides a submitted form (or a call) asks for.

    A field left at the value the form shows means "the profile's own value", so it is not an
    override: the flow's ``defaults``, or ``workspace()``'s (what a deployment's form shows:
    :func:`workspace_defaults`, read only when a value differs from ``defaults``).
    """
    changed = {n: v for n, v in values.items() if v != defaults.get(n)}
    if changed:
        theirs = workspace()
        changed = {n: v for n, v in changed.items() if v != theirs.get(n)}
    return [o for f in FIELDS if f.name in changed for o in f.override(changed[f.name])]
