"""The three kinds of model a pipeline run makes, one record each.

A run pretrains a base language model, fine-tunes a classifier on it and (with ``sft.enabled``)
tunes it on prompt/completion pairs. Each kind goes by three names, and this module is the one
place that lines them up:

======  ==========  ==========  =========================================================
kind    step        section     where each name is used
======  ==========  ==========  =========================================================
base    pretrain    train       kind: ``ModelEval.kind``, ``Candidate.kind``,
task    finetune    finetune    ``registry.gate.<kind>``; step: its key, its runs folder,
sft     sft         sft         its command, the loop's label; section: its training keys
======  ==========  ==========  =========================================================

The records hold facts only (strings), so every layer can read them, the training loop included
(:mod:`gpt.train` names the batch size to lower when a step runs out of memory). What a kind
*does* sits beside the code that does it and is looked up by the record's name: its evaluation
(``gpt.pipeline.steps.EVALUATORS``), its registry candidate (``gpt.pipeline.candidates.BUILDERS``)
and its training step's key (``gpt.pipeline.keys.model``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: how the pipeline, the params and the registry name it."""

    name: str  #: the kind: ``ModelEval.kind``, ``Candidate.kind``, ``registry.gate.<name>``
    step: str  #: its training step: the step key, ``.gptops/runs/<step>``, ``gptops <step>``
    section: str  #: the params section of its training hyperparameters
    registry_key: str  #: ``registry.<registry_key>`` names the registered model
    name_suffix: str  #: the suffix of a registered name derived from a task file
    metric_prefix: str  #: the prefix of its training step's metrics in MLflow
    hf_task: str  #: the transformers task it is registered and served for
    metrics: tuple[str, ...]  #: its evaluation's own metrics a gate may list
    #: its gate when ``registry.gate.<name>`` is ``[]`` (a params.yaml older than the gate)
    standard_gate: tuple[str, ...]
    tuned: bool  #: trained from a base model (its parent version), not pretrained

    @property
    def language_model(self) -> bool:
        """A model that generates text: the benchmarks (``bench.*`` metrics) run on it."""
        return self.hf_task == "text-generation"

    @property
    def batch_key(self) -> str:
        """The params key of its training step's global batch size."""
        return f"{self.section}.batch_size"

    @property
    def lr_key(self) -> str:
        """The params key of its training step's learning rate."""
        return f"{self.section}.lr"

    @property
    def gate_key(self) -> str:
        """The params key listing the metrics its gate reads."""
        return f"registry.gate.{self.name}"


#: Per ``sft.task_type``, the metrics the SFT model's evaluation reports
#: (``gpt.evaluate.generation_metrics``) next to the base model's; the first is the SFT gate's
#: standard metric. ``exact_match``/``token_f1``: SQuAD's; ROUGE: rouge-score; BLEU/chrF: sacrebleu.
SFT_TASK_METRICS: dict[str, tuple[str, ...]] = {
    "summarise": ("rouge_l", "rouge_1", "rouge_2", "exact_match", "token_f1"),
    "qa": ("token_f1", "exact_match"),
    "translate": ("chrf", "bleu", "exact_match", "token_f1"),
    "generic": ("rouge_l", "rouge_1", "rouge_2", "exact_match", "token_f1", "chrf", "bleu"),
}

BASE = ModelKind("base", "pretrain", "train", "base_model", "", "train/", "text-generation",
                 ("val_ppl", "val_loss"), ("val_ppl",), tuned=False)
TASK = ModelKind("task", "finetune", "finetune", "task_model", "clf", "finetune/",
                 "text-classification", ("macro_f1", "accuracy"), ("macro_f1", "accuracy"),
                 tuned=True)
#: SFT's metrics and standard gate follow ``sft.task_type`` (``gpt.pipeline.candidates.
#: kind_metrics`` and ``gate_metrics``); the record holds every type's (``generic``'s).
SFT = ModelKind("sft", "sft", "sft", "sft_model", "sft", "sft/", "text-generation",
                SFT_TASK_METRICS["generic"], SFT_TASK_METRICS["generic"][:1], tuned=True)
#: Every kind, in the order a run trains, evaluates and registers them (base first: the others
#: name its version as their parent).
KINDS = (BASE, TASK, SFT)


def named(name: str) -> ModelKind:
    """The kind called ``name`` (``base``, ``task`` or ``sft``).

    Raises:
        KeyError: no such kind (a programming error: names come from these records).
    """
    for k in KINDS:
        if k.name == name:
            return k
    raise KeyError(f"unknown model kind {name!r} (known: {', '.join(k.name for k in KINDS)})")


def of_step(step: str) -> ModelKind:
    """The kind the training step ``step`` (``pretrain``, ``finetune`` or ``sft``) makes.

    Raises:
        KeyError: no kind is made by such a step.
    """
    for k in KINDS:
        if k.step == step:
            return k
    raise KeyError(f"no model kind is made by a step {step!r} (known: "
                   f"{', '.join(k.step for k in KINDS)})")
