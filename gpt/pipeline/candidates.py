"""One :class:`~gpt.registry.Candidate` per model kind, from its evaluation.

Each builder says, for its kind, what the registry needs: the name, the transformers task, the
headline metrics, the gate (primary metric, direction, trivial baseline), the lineage, the HF
export and the evidence logged next to the version. :func:`gpt.registry.register` then treats
all kinds alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from gpt import evaluate as ev
from gpt.config import Params
from gpt.data.tokenizer import EOT, PAD
from gpt.evaluate import ModelEval
from gpt.pipeline import keys
from gpt.pipeline.paths import Inputs, RunPaths
from gpt.registry import Candidate, GateSpec, Tracking

#: The classifier metrics stored on its version (per-class metrics go to an artifact).
TASK_HEADLINE = ("accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1")


@dataclass
class Context:
    """What every builder reads: the workspace, params, data version and where runs go."""

    paths: RunPaths
    params: Params
    data_version: str
    tracking: Tracking

    def __post_init__(self) -> None:
        self.inputs = Inputs(self.paths, self.params)

    def ids(self) -> tuple[int, int]:
        tok = self.inputs.hf_tokenizer
        return tok.convert_tokens_to_ids(EOT), tok.convert_tokens_to_ids(PAD)


def _base(ctx: Context, e: ModelEval, key: keys.StepKey) -> dict[str, Any]:
    from gpt.hf import to_hf_lm

    def export() -> tuple[Any, Any]:
        return to_hf_lm(ctx.inputs.language_model(key), *ctx.ids()), ctx.inputs.hf_tokenizer

    p = ctx.paths
    # The trivial baseline of perplexity: a uniform guess over the vocabulary.
    return {"name": ctx.params.registry.base_model, "task": "text-generation",
            "metrics": dict(e.metrics),
            "spec": GateSpec("val_ppl", False, float(ctx.inputs.vocab_size)), "export": export,
            "artifacts": {"data": p.clean_stats, "data_report": p.clean_report,
                          "tokenizer": p.tokenizer},
            "tables": {"samples/generations.json": e.examples}}


def _task(ctx: Context, e: ModelEval, key: keys.StepKey) -> dict[str, Any]:
    from gpt.hf import to_hf_classifier

    def export() -> tuple[Any, Any]:
        clf = ctx.inputs.classifier(key)
        return (to_hf_classifier(clf.body, clf.score, e.labels, *ctx.ids()),
                ctx.inputs.hf_tokenizer)

    png = ev.plot_confusion_matrix(e.confusion_matrix, e.labels,
                                   ctx.paths.step(key) / "eval" / "confusion_matrix.png")
    documents: dict[str, Any] = {
        "eval/task_metrics.json": e.metrics,
        "eval/confusion_matrix.json": {"labels": e.labels, "matrix": e.confusion_matrix}}
    if e.unseen_labels:
        documents["eval/unseen_test_labels.json"] = e.unseen_labels
    metrics = {k: e.metrics[k] for k in TASK_HEADLINE}
    # The trivial baseline: always predicting the majority class.
    return {"name": ctx.params.registry.task_model, "task": "text-classification",
            "metrics": metrics, "spec": GateSpec("macro_f1", True, metrics["baseline_macro_f1"]),
            "export": export, "artifacts": {"eval": png}, "documents": documents,
            "tables": {"eval/per_class.json": ev.per_class_table(e.metrics, e.labels,
                                                                 e.confusion_matrix)}}


def _sft(ctx: Context, e: ModelEval, key: keys.StepKey) -> dict[str, Any]:
    from gpt.hf import to_hf_lm

    def export() -> tuple[Any, Any]:
        return to_hf_lm(ctx.inputs.language_model(key), *ctx.ids()), ctx.inputs.hf_tokenizer

    # The trivial baseline: the base model prompted the same way.
    return {"name": ctx.params.registry.sft_model, "task": "text-generation",
            "metrics": dict(e.metrics),
            "spec": GateSpec("rouge_l", True, e.metrics["baseline_rouge_l"]), "export": export,
            "tables": {"eval/sft_examples.json": e.examples}}


BUILDERS: dict[str, Callable[[Context, ModelEval, keys.StepKey], dict[str, Any]]] = {
    "base": _base, "task": _task, "sft": _sft}


def build(ctx: Context, e: ModelEval, base_version: str | None) -> Candidate:
    """The candidate of ``e.kind``; ``base_version`` is the base it was fine-tuned from."""
    params, reg = ctx.params, ctx.params.registry
    key = keys.TRAINING[e.kind](params, ctx.data_version)
    fields = BUILDERS[e.kind](ctx, e, key)
    fields["spec"] = replace(fields["spec"], min_improvement=reg.min_improvement)
    tags = dict(ctx.tracking.tags)
    if e.kind != "base" and base_version:
        tags["parent_model_version"] = f"{reg.base_model}/{base_version}"
    done = ctx.paths.read_result(key) or {}
    same_store = done.get("tracking_uri") == ctx.tracking.uri
    c_keys = {"model_key": key.digest, "eval_key": e.key}
    card = model_card(e.kind, fields["name"], {**tags, **c_keys, "eval_hash": e.eval_hash},
                      fields["metrics"], params)
    return Candidate(kind=e.kind, eval_hash=e.eval_hash, keys=c_keys, tags=tags, card=card,
                     run_id=done.get("run_id") if same_store else None, license=reg.license,
                     **fields)


def model_card(kind: str, name: str, tags: dict[str, str], metrics: dict[str, float],
               params: Params) -> str:
    """The version's description: architecture, metrics, lineage, how to reproduce it."""
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items()))
    lineage = "\n".join(f"- **{k}**: `{v}`" for k, v in sorted(tags.items()))
    m = params.model
    return (f"# {name} ({kind})\n\nGPT decoder, {m.n_layer} layers, {m.n_head} heads, "
            f"{m.n_embd} dims, context {m.block_size}; profile `{params.profile}`.\n\n"
            f"## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            f"## Lineage\n\n{lineage}\n\n"
            "Reproduce: check out `git_commit`, `dvc pull`, then `gptops run` with the same "
            "profile.\n")
