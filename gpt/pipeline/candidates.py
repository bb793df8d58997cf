"""One :class:`~gpt.registry.Candidate` per model kind, from its evaluation.

Each builder says, for its kind, what the registry needs: the name, the transformers task, the
headline metrics, the gate (primary metric, direction, trivial baseline), the lineage, the HF
export and the evidence logged next to the version. :func:`gpt.registry.register` then treats
all kinds alike.

:func:`model_name` is the one place a kind's registered name is decided (the CLI's default
model lookup uses it too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt.config import PROJECT_PARAMS, Params, read_params_file
from gpt.data.tokenizer import EOT
from gpt.errors import ConfigError
from gpt.kinds import BASE, SFT, SFT_TASK_METRICS, TASK, named
from gpt.layout import Workspace
from gpt.pipeline import keys
from gpt.registry import Bar, Candidate, GateSpec, Tracking
from gpt.registry.tags import CODE_HASH, EVAL_HASH, EVAL_KEY, FLOW_RUN_URL, MODEL_KEY, PARENT

if TYPE_CHECKING:  # heavy (torch, matplotlib): imported where used, so `gptops predict` and
    # `generate` can ask model_name() without them
    from gpt.evaluate import ModelEval
    from gpt.pipeline.paths import Inputs, RunPaths

#: The classifier metrics stored on its version (per-class metrics go to an artifact).
TASK_HEADLINE = ("accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1")
#: gptops metrics where lower is better (bench.* directions come from lm-eval).
LOWER_IS_BETTER = ("val_ppl", "val_loss")


def kind_metrics(kind: str, params: Params) -> tuple[str, ...]:
    """The metrics ``kind``'s own evaluation gives (SFT: those of its ``sft.task_type``)."""
    return SFT_TASK_METRICS[params.sft.task_type] if kind == SFT.name else named(kind).metrics


def gate_metrics(kind: str, params: Params) -> list[str]:
    """The metrics ``registry.gate`` lists for ``kind``; when empty, its standard gate (SFT: the
    first metric of its ``sft.task_type``: ROUGE-L, F1 or chrF)."""
    listed = list(getattr(params.registry.gate, kind))
    if listed:
        return listed
    return [kind_metrics(kind, params)[0]] if kind == SFT.name else list(named(kind).standard_gate)


def gate_spec(kind: str, params: Params, e: ModelEval,
              baselines: dict[str, float] | None = None) -> GateSpec:
    """The gate of ``kind`` from ``registry.gate``: direction by metric (lm-eval's
    ``higher_is_better`` for ``bench.*``), baseline ``baseline_<metric>`` of the evaluation
    unless ``baselines`` gives one."""
    def bar(m: str) -> Bar:
        up = e.higher_is_better.get(m, m not in LOWER_IS_BETTER)
        base = (baselines or {}).get(m, e.metrics.get(f"baseline_{m}"))
        return Bar(m, up, base)

    first, *rest = [bar(m) for m in gate_metrics(kind, params)]
    return GateSpec(first.metric, first.higher_is_better, first.baseline,
                    params.registry.min_improvement, tuple(rest))


@dataclass
class Context:
    """What every builder reads: the workspace, params, data version and where runs go."""

    paths: RunPaths
    params: Params
    data_version: str
    tracking: Tracking
    base: str | None = None  #: digest of a registered base the tuned models start from

    def __post_init__(self) -> None:
        from gpt.pipeline.paths import Inputs

        self.inputs: Inputs = Inputs(self.paths, self.params)

    def ids(self) -> tuple[int, int]:
        tok = self.inputs.hf_tokenizer
        return tok.convert_tokens_to_ids(EOT), tok.pad_token_id


def _lm_export(ctx: Context, load: Callable[[], Any]) -> Callable[[], tuple[Any, Any]]:
    """The HF export of a language model ``load()`` returns (built when registering)."""
    def export() -> tuple[Any, Any]:
        from gpt.hf import to_hf_lm

        return to_hf_lm(load(), *ctx.ids()), ctx.inputs.hf_tokenizer

    return export


def _base_fields(ctx: Context, e: ModelEval, load: Callable[[], Any]) -> dict[str, Any]:
    p = ctx.paths
    # The baseline of perplexity: the checkpoint continued pretraining started from (measured on
    # the same batches), else a uniform guess over the vocabulary.
    vocab = float(ctx.inputs.vocab_size)
    baselines = {"val_ppl": e.metrics.get("baseline_val_ppl", vocab),
                 "val_loss": e.metrics.get("baseline_val_loss", math.log(vocab))}
    return {"name": model_name(BASE.name, ctx.params), "task": BASE.hf_task,
            "metrics": dict(e.metrics),
            "spec": gate_spec(BASE.name, ctx.params, e, baselines),
            "export": _lm_export(ctx, load),
            "artifacts": {"data": p.clean_stats, "data_report": p.clean_report,
                          "tokenizer": p.tokenizer},
            **_bench_evidence(e, {"samples/generations.json": e.examples})}


def _bench_evidence(e: ModelEval, tables: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's results JSON and the benchmark table, when benchmarks ran."""
    if not e.benchmarks:
        return {"tables": tables}
    results = {k: v for k, v in e.benchmarks.items() if k != "table"}
    return {"documents": {"eval/lm_eval_results.json": results},
            "tables": {**tables, "eval/benchmarks.json": e.benchmarks.get("table", [])}}


def _base(ctx: Context, e: ModelEval, key: keys.StepKey) -> dict[str, Any]:
    return _base_fields(ctx, e, lambda: ctx.inputs.language_model(key))


def _task(ctx: Context, e: ModelEval, key: keys.StepKey) -> dict[str, Any]:
    from gpt import evaluate as ev
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
    # The trivial baseline: always predicting the majority class (every gate metric beats it).
    return {"name": model_name(TASK.name, ctx.params), "task": TASK.hf_task,
            "metrics": metrics, "spec": gate_spec(TASK.name, ctx.params, e),
            "export": export, "artifacts": {"eval": png}, "documents": documents,
            "tables": {"eval/per_class.json": ev.per_class_table(e.metrics, e.labels,
                                                                 e.confusion_matrix)}}


def _sft(ctx: Context, e: ModelEval, key: keys.StepKey) -> dict[str, Any]:
    # The trivial baseline: the base model prompted the same way.
    return {"name": model_name(SFT.name, ctx.params), "task": SFT.hf_task,
            "metrics": dict(e.metrics), "spec": gate_spec(SFT.name, ctx.params, e),
            "export": _lm_export(ctx, lambda: ctx.inputs.language_model(key)),
            **_bench_evidence(e, {"eval/sft_examples.json": e.examples})}


#: Characters that break MLflow names, ``models:/<name>@<alias>`` URIs or registry searches.
_BAD_NAME = re.compile(r"[/:@%'\"\\]")


@lru_cache(maxsize=1)
def _template_names() -> dict[str, str]:
    """The model names of the project's params.yaml (the template every workspace starts from)."""
    try:
        section = read_params_file(PROJECT_PARAMS).get("registry") or {}
    except ConfigError:  # not shipped with this install: every configured name is explicit
        return {}
    return {k: str(v) for k, v in section.items() if k.endswith("_model")}


def _slug(stem: str) -> str:
    """``stem`` as a name part: lower case, runs of other characters as one ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:60].strip("-") or "task"


def model_name(kind: str, params: Params) -> str:
    """The registered name of the ``kind`` (a :mod:`gpt.kinds` name) model.

    ``registry.<kind>_model`` names it. Left at the project default while the kind trains on a
    file (``finetune.task=file`` / ``sft.task=file``), the name follows the file instead, so your
    own task gets its own model: ``tickets.csv`` registers ``gptops-tickets-clf`` (SFT:
    ``gptops-<stem>-sft``) and the built-in task's champion is left alone. Any other value is
    used as written.

    Raises:
        ConfigError: a configured name MLflow cannot register or address.
    """
    k = named(kind)
    key = k.registry_key
    name = str(getattr(params.registry, key))
    source = getattr(params, k.section) if k.tuned else None
    if (source is not None and source.task == "file" and source.task_path
            and name == _template_names().get(key)):
        return f"gptops-{_slug(Path(source.task_path).stem)}-{k.name_suffix}"
    if not name.strip() or _BAD_NAME.search(name):
        raise ConfigError(f"registry.{key} = {name!r} is not a usable model name; use letters, "
                          f"digits, '-', '_' or '.' (e.g. --set registry.{key}=my-model)")
    return name


#: Each model kind's candidate fields, by :attr:`gpt.kinds.ModelKind.name`.
BUILDERS: dict[str, Callable[[Context, ModelEval, keys.StepKey], dict[str, Any]]] = {
    BASE.name: _base, TASK.name: _task, SFT.name: _sft}


def build(ctx: Context, e: ModelEval, parent: str | None) -> Candidate:
    """The candidate of ``e.kind``; ``parent`` (``<name>/<version>``) is the base it was tuned
    from."""
    params, reg = ctx.params, ctx.params.registry
    key = keys.model(e.kind, params, ctx.data_version, ctx.base)
    fields = BUILDERS[e.kind](ctx, e, key)
    tags = {**ctx.tracking.tags, CODE_HASH: key.code_hash}
    if named(e.kind).tuned and parent:
        tags[PARENT] = parent
    done = ctx.paths.read_result(key) or {}
    # A copied or moved workspace's own store holds the step's run under the same id (the
    # registration checks that the run exists): the result's old store URI names it too.
    own = "/" + Workspace.relative().mlflow_db.as_posix()
    same_store = done.get("tracking_uri") == ctx.tracking.uri or (
        str(done.get("tracking_uri", "")).endswith(own)
        and ctx.tracking.uri == f"sqlite:///{Workspace(ctx.paths.root.resolve()).mlflow_db}")
    c_keys = {MODEL_KEY: key.digest, EVAL_KEY: e.key}
    card = model_card(e.kind, fields["name"], {**tags, **c_keys, EVAL_HASH: e.eval_hash},
                      fields["metrics"], params)
    return Candidate(kind=e.kind, eval_hash=e.eval_hash, keys=c_keys, tags=tags, card=card,
                     run_id=done.get("run_id") if same_store else None, license=reg.license,
                     **fields)


def imported(ctx: Context, e: ModelEval, model: Any, tags: dict[str, str]) -> Candidate:
    """The candidate ``gptops import`` registers: a base whose weights are ``model`` as loaded.

    Its model and eval keys are both the evaluation's key (``import-<checkpoint digest>``).
    """
    fields = _base_fields(ctx, e, lambda: model)
    # its weights are what pretraining from the checkpoint starts with
    tags = {**tags, CODE_HASH: keys.digest_of(keys.code(BASE.step, "hf"))}
    c_keys = {MODEL_KEY: e.key, EVAL_KEY: e.key}
    card = model_card(f"{BASE.name} (imported)", fields["name"], {**tags, **c_keys},
                      fields["metrics"], ctx.params)
    return Candidate(kind=BASE.name, eval_hash=e.eval_hash, keys=c_keys, tags=tags, card=card,
                     license=ctx.params.registry.license, **fields)


def checkpoint(ctx: Context, e: ModelEval, model: Any, key: keys.StepKey, step: int,
               tags: dict[str, str]) -> Candidate:
    """The candidate ``gptops register-checkpoint`` registers: a base whose weights are the
    kept checkpoint of pretraining ``key`` at optimizer step ``step`` (``model``, as loaded).

    Its model key is ``<pretrain key>-step<N>``; ``tags`` carry the checkpoint's step, logged
    model and run beside the pipeline run's lineage. It is registered in a run of its own, so
    the training run's metrics stay those of its final weights."""
    fields = _base_fields(ctx, e, lambda: model)
    tags = {**tags, CODE_HASH: key.code_hash}
    c_keys = {MODEL_KEY: f"{key.digest}-step{step}", EVAL_KEY: e.key}
    card = model_card(f"{BASE.name} (checkpoint)", fields["name"], {**tags, **c_keys},
                      fields["metrics"], ctx.params)
    return Candidate(kind=BASE.name, eval_hash=e.eval_hash, keys=c_keys, tags=tags, card=card,
                     license=ctx.params.registry.license, **fields)


def model_card(kind: str, name: str, tags: dict[str, str], metrics: dict[str, float],
               params: Params) -> str:
    """The version's description: architecture, metrics, lineage, how to reproduce it."""
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items()))
    lineage = "\n".join(f"- **{k}**: [{v}]({v})" if k == FLOW_RUN_URL else f"- **{k}**: `{v}`"
                         for k, v in sorted(tags.items()))
    m = params.model
    return (f"# {name} ({kind})\n\nGPT decoder, {m.n_layer} layers, {m.n_head} heads, "
            f"{m.n_embd} dims, context {m.block_size}; profile `{params.profile}`.\n\n"
            f"## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            f"## Lineage\n\n{lineage}\n\n"
            "Reproduce: check out `git_commit`, `dvc pull`, then `gptops run` with the same "
            "profile (with `git_dirty` true, the code had uncommitted changes: the step's "
            "`key.json` lists each file's hash, `code_hash` is their digest).\n")
