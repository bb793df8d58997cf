"""Pipeline steps as plain functions: the one API both the CLI and the Prefect tasks call.

Each training step is keyed by exactly what it reads (:mod:`gpt.pipeline.keys`) and keeps its
outputs in ``.gptops/runs/<step>/<key>/``. A step whose key is unchanged and finished is reused,
and says so ("pretrain: reused (key 3f2a…)"); an unfinished one resumes from its checkpoints.
Training steps open one nested MLflow run each, under the pipeline's parent run, which ends when
the step ends. Evaluation is cached the same way, per model. Registration turns each evaluated
model into a :class:`~gpt.registry.Candidate` and gates it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gpt import evaluate as ev
from gpt import launch, progress
from gpt.config import Params, get_dotted
from gpt.dvc_repo import verify_outputs
from gpt.errors import ConfigError
from gpt.evaluate import ModelEval
from gpt.kinds import BASE, KINDS, SFT, TASK, of_step
from gpt.launch import World
from gpt.pipeline import candidates, keys
from gpt.pipeline.base import Base
from gpt.pipeline.context import RunContext, lineage, pin_base
from gpt.pipeline.keys import StepKey
from gpt.pipeline.paths import Inputs
from gpt.registry import (
    Dataset,
    MetricsLogger,
    Registration,
    child_run,
    register,
    require_finite,
)
from gpt.registry import tags as tag
from gpt.registry.checkpoints import CheckpointModels
from gpt.registry.tracking import system_metrics

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What a training step did (or found already done)."""

    step: str
    key: str
    reused: bool
    out_dir: str
    steps: int = 0  #: optimizer steps this call ran
    resumed_from: int = 0
    seconds: float = 0.0
    tokens_per_sec: float = 0.0
    device: str = ""
    loss: float = float("nan")  #: validation loss (pretrain) or last training loss
    run_id: str | None = None  #: the MLflow run that trained it
    tracking_uri: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def _flat(reads: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in reads.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


@contextmanager
def _tracked(ctx: RunContext, key: StepKey) -> Iterator[tuple[str | None, Any]]:
    """(run id, metrics callback) of the step's child run; (None, None) without tracking."""
    tracking = ctx.tracking
    if tracking is None:
        yield None, None
        return
    tags = {tag.STEP_TAG: key.step, tag.STEP_KEY: key.digest}
    data = Dataset(name=f"tokens-{ctx.data_version}", digest=ctx.data_version,
                   source=str(ctx.paths.tokens.resolve()))
    with child_run(tracking, f"{key.step} {key.short}", tags, _flat(key.reads), data) as run_id, \
            system_metrics(tracking.uri, run_id, ctx.params.registry.system_metrics_interval):
        # Pretraining's checkpoints become MLflow logged models (gpt.registry.checkpoints).
        models = CheckpointModels(tracking.uri, run_id, key.step, key.digest,
                                  (data.name, data.digest), dict(tracking.tags)
                                  ) if key.step == BASE.step else None
        callback = MetricsLogger(tracking.uri, run_id, prefix=of_step(key.step).metric_prefix,
                                 checkpoints=models)
        try:
            yield run_id, callback
        except BaseException:
            with contextlib.suppress(Exception):  # a stopped step keeps the metrics it logged
                callback.flush()
            raise
        callback.flush()


class _Both:
    """Two metrics callbacks as one: MLflow's logger, then a monitor (which may stop the step)."""

    def __init__(self, first: Any, then: Any) -> None:
        self.first, self.then = first, then

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if self.first is not None:
            self.first(step, metrics)
        self.then(step, metrics)

    def flush(self) -> None:
        if self.first is not None:
            self.first.flush()

    def checkpoint(self, step: int, path: Path) -> None:
        if self.first is not None:
            self.first.checkpoint(step, path)


#: A step's training function, run in each of its processes: ``fit(ctx, out, callback, **more)``
#: returns the :class:`StepResult` fields (module level: the ranks are spawned).
Fit = Callable[..., dict[str, Any]]


def _train(ctx: RunContext, key: StepKey, world: World, fit: Fit,
           monitor: Callable[[int, dict[str, float]], None] | None = None,
           **more: Any) -> StepResult:
    """Reuse the finished step ``key``, or run ``fit(ctx=, out=, callback=, **more)`` on
    ``world``'s processes (:mod:`gpt.launch`) inside the step's MLflow run and record its result.

    ``monitor(step, metrics)`` sees what the loop reports (one process only); it may raise
    :class:`~gpt.errors.StoppedEarly` to end the step, which is then not recorded as finished.
    """
    paths = ctx.paths
    done = paths.read_result(key)
    if done is not None:
        log.info("%s: reused (key %s): finished earlier in %s", key.step, key.short,
                 paths.step(key))
        # out_dir: where it is now (the workspace may have been copied or moved since)
        return StepResult(**{**done, "reused": True, "out_dir": str(paths.step(key))})
    out = paths.step(key)
    job = launch.Job(key.step, key.digest, world, ctx.params.launch.device, fit)
    if world.node_rank > 0:  # node 0 tracks and records the step; this node lends processes
        launch.run(job, ctx=ctx, out=out, callback=None, **more)
        return StepResult(step=key.step, key=key.digest, reused=False, out_dir=str(out),
                          info={"node_rank": world.node_rank, "nnodes": world.nnodes})
    with _tracked(ctx, key) as (run_id, callback):
        if monitor is not None:
            callback = _Both(callback, monitor)
        fields = launch.run(job, ctx=ctx, out=out, callback=callback, **more)
    if world.size > 1:
        fields["info"] = {**fields.get("info", {}), "processes": world.size,
                          "strategy": world.strategy}
    result = StepResult(step=key.step, key=key.digest, reused=False, out_dir=str(out),
                        run_id=run_id, tracking_uri=ctx.tracking.uri if ctx.tracking else "",
                        **fields)
    paths.write_result(key, asdict(result))
    return result


def _loop_fields(loop: Any, info: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    info = {**(info or {}), **({"rank_digests": loop.rank_digests} if loop.rank_digests else {})}
    return {"steps": loop.steps, "resumed_from": loop.resumed_from,
            "seconds": round(loop.seconds, 2), "tokens_per_sec": round(loop.tokens_per_sec, 1),
            "loss": loop.final_loss, "info": info, **extra}


def _fit_pretrain(ctx: RunContext, out: Path, callback: Any, bench_dir: str = "",
                  ) -> dict[str, Any]:
    """Pretraining in one process of the step's world (``bench_dir``: the built-in benchmark
    items scored every ``train.bench_interval`` steps; "" = none)."""
    from gpt.train import pretrain

    p = ctx.params
    bench = _training_bench(ctx, Path(bench_dir)) if bench_dir else None
    r = pretrain(p.model, p.train, p.launch, ctx.paths.tokens, out, resume=True,
                 callback=callback, mixture=p.data.mixture, bench=bench)
    if callback is not None:
        callback.flush()
    return {**_loop_fields(r.loop, device=r.device, info={
        "skipped_steps": r.loop.skipped_steps}), "loss": r.val_loss}


def _training_bench(ctx: RunContext, folder: Path) -> Callable[[Any], dict[str, float]]:
    """``bench(model)``: the built-in suite's first ``train.bench_limit`` items per task scored
    on the live model, ``bench.<task>.<metric>`` (process 0 scores and reports; every process
    of a sharded model takes part, its forward needs them all)."""
    from gpt import benchmarks as bm
    from gpt import distributed

    p = ctx.params
    tokenizer = Inputs(ctx.paths, p).hf_tokenizer
    s = bm.suite(folder, [], [], p.train.bench_limit)

    def bench(model: Any) -> dict[str, float]:
        if distributed.rank() != 0 and not distributed.is_sharded(model):
            return {}
        r = bm.score(model, tokenizer, s, p.evaluate.batch_size, None, p.evaluate.seed)
        return r.metrics if distributed.rank() == 0 else {}

    return bench


def pretrain_step(ctx: RunContext,
                  monitor: Callable[[int, dict[str, float]], None] | None = None) -> StepResult:
    """Pretrain the base model (or reuse / resume the one trained with this key).

    ``monitor``: sees each step's metrics (``val_loss`` at evaluation points) and may stop the
    step early (a pruned tuning trial); it needs one training process.
    """
    params = ctx.params
    world = World.of(params.launch, get_dotted(params, BASE.batch_key), BASE.batch_key)
    if monitor is not None and world.size > 1:
        raise ConfigError(f"a monitored pretraining step runs in one process, not {world.size}"
                          ": set launch.nproc_per_node=1")
    verify_outputs(ctx.workdir)
    key = keys.pretrain(params, ctx.data_version)
    bench_dir = ""
    if params.train.bench_interval and ctx.paths.read_result(key) is None:
        bench_dir = str(_bench_items(Inputs(ctx.paths, params), params, ctx.data_version))
    return _train(ctx, key, world, _fit_pretrain, monitor, bench_dir=bench_dir)


#: tune(inputs, params, base model, output folder, metrics callback) -> StepResult fields
Tune = Callable[[Inputs, Params, Any, Path, Any], dict[str, Any]]


def _base_model(ctx: RunContext, inputs: Inputs, base: Base):
    """The base LM a tuned model starts from (a fresh copy: tuning changes it in place)."""
    if base.pretrained_here:
        return inputs.language_model(keys.pretrain(ctx.params, ctx.data_version))
    from gpt.pipeline import base as base_mod

    return base_mod.load(base, ctx.tracking_uri, ctx.params, inputs.vocab_size)


def _fit_tuned(ctx: RunContext, out: Path, callback: Any, tune: Tune) -> dict[str, Any]:
    """Tuning in one process of the step's world (``ctx``'s base is pinned)."""
    from gpt.train import resolve_device

    params, base = ctx.params, ctx.base
    inputs = Inputs(ctx.paths, params)
    fields = tune(inputs, params, _base_model(ctx, inputs, base), out, callback)
    if callback is not None:
        callback.flush()
    return {**fields, "device": str(resolve_device(params.launch.device)),
            "info": {**fields.get("info", {}), "base": base.spec or "pretrain",
                     "base_version": base.lineage}}


def _on_base(ctx: RunContext, step: Callable[..., StepKey], tune: Tune, batch: str) -> StepResult:
    """A step that tunes a base; without a finished or registered base it fails before a run.

    ``batch`` names the step's global batch size (``finetune.batch_size``...).
    """
    params = ctx.params
    world = World.of(params.launch, get_dotted(params, batch), batch)
    ctx = pin_base(ctx)
    base = ctx.base
    key = step(params, ctx.data_version, base.digest)
    verify_outputs(ctx.workdir)
    if ctx.paths.read_result(key) is None:
        if base.pretrained_here:
            Inputs(ctx.paths, params).weights(keys.pretrain(params, ctx.data_version))
        else:
            log.info("%s: starting from %s (v%s)", key.step, base.name, base.version)
    return _train(ctx, key, world, _fit_tuned, tune=tune)


def _tune_classifier(inputs: Inputs, params: Params, model: Any, out: Path,
                     callback: Any) -> dict[str, Any]:
    from gpt.finetune import finetune_classifier

    task = inputs.task
    r = finetune_classifier(model, inputs.tokenizer, task, params.finetune, out,
                            device_name=params.launch.device, callback=callback)
    return _loop_fields(r.loop, info={"train_examples": len(task.train),
                                      "test_examples": len(task.test), "labels": task.labels})


def _tune_sft(inputs: Inputs, params: Params, model: Any, out: Path,
              callback: Any) -> dict[str, Any]:
    from gpt.finetune import finetune_sft

    task = inputs.sft_task
    r = finetune_sft(model, inputs.tokenizer, task.train, params.sft, out,
                     device_name=params.launch.device, callback=callback)
    return _loop_fields(r.loop, info={"train_pairs": len(task.train),
                                      "test_pairs": len(task.test)})


def finetune_step(ctx: RunContext) -> StepResult:
    """Fine-tune a base as a classifier (finetune.task: package or file).

    The base is ``ctx.base_spec``: "" = this run's pretrained base; ``models:/<name>@<alias>``
    or ``/<version>`` = a registered one (no pretraining needed).
    """
    return _on_base(ctx, keys.finetune, _tune_classifier, TASK.batch_key)


def sft_step(ctx: RunContext) -> StepResult:
    """Supervised fine-tuning of a base LM on prompt/completion pairs (prompt masked)."""
    return _on_base(ctx, keys.sft, _tune_sft, SFT.batch_key)


# --- evaluation ---------------------------------------------------------------------------------


def bench_fits(tokenizer: Any, block_size: int) -> Any:
    """Whether a built-in item's target or ending fits the model: at most half its context, so
    the passage before it fits too (lm-eval refuses a continuation longer than the context)."""
    return lambda text: len(tokenizer(text)["input_ids"]) <= block_size // 2


def _bench_items(inputs: Inputs, params: Params, data_version: str) -> Path:
    """The built-in benchmark's task folder, its items built once per data version, size and
    seed from the validation documents only (:func:`gpt.benchmarks.build_items`)."""
    from gpt import benchmarks as bm

    e = params.evaluate
    block = params.model.block_size
    digest = keys.digest_of({"data_version": data_version, "limit": e.max_items,
                             "seed": e.seed, "items_version": bm.ITEMS_VERSION,
                             "block_size": block, "ngram": params.clean.decontaminate_ngram})
    folder = inputs.paths.step_dir("bench-items", digest)
    if (folder / "items.json").is_file():
        return folder
    meta = json.loads(inputs.paths.token_meta.read_text())
    split = (inputs.paths.clean, meta["val_fraction"], meta["seed"])
    with progress.phase("evaluate: benchmark items (validation documents, decontaminated)"):
        items = bm.build_items(bm.validation_docs(*split), e.max_items, e.seed,
                               (t for _, t in bm.split_docs(*split, val=False)),
                               fits=bench_fits(inputs.hf_tokenizer, block),
                               ngram=params.clean.decontaminate_ngram)
    tmp = folder.with_name(f".{digest}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    bm.write_builtin(items, tmp, folder)
    (tmp / "items.json").write_text(json.dumps({t: len(v) for t, v in items.items()}))
    shutil.rmtree(folder, ignore_errors=True)  # a torn folder of an earlier crash
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same items first: theirs are equal
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "items.json").is_file():
            raise
    return folder


def bench_hash(params: Params, data_version: str) -> str:
    """The benchmark part of an evaluation set's hash ("" when no benchmark runs)."""
    reads = keys.benchmarks(params)
    return f"-bench{keys.digest_of({**reads, 'data': data_version})[:8]}" if reads else ""


def _benchmarks(inputs: Inputs, params: Params, data_version: str, model: Any,
                ) -> dict[str, Any]:
    """The model's benchmark numbers as :class:`ModelEval` fields (``{}`` when none runs):
    ``metrics`` (``bench.*`` and the built-in choice task's chance as its baseline),
    ``higher_is_better`` and lm-eval's ``benchmarks`` results."""
    e = params.evaluate
    if not e.any_benchmarks:
        return {}
    from gpt import benchmarks as bm
    from gpt.train import resolve_device

    builtin = _bench_items(inputs, params, data_version) if e.builtin_benchmarks else None
    s = bm.suite(builtin, e.benchmarks, e.benchmark_dirs, e.max_items)
    with progress.phase(f"evaluate: benchmarks ({', '.join(s.tasks)})"):
        r = bm.score(model, inputs.hf_tokenizer, s, e.batch_size,
                     str(resolve_device(params.launch.device)), e.seed)
    log.info("evaluate: benchmarks %s in %.1fs: %s", ", ".join(s.tasks), r.seconds,
             ", ".join(f"{k.removeprefix('bench.')}={v:.4g}" for k, v in r.metrics.items()))
    chance = {f"baseline_{k}": v for k, v in bm.CHANCE.items() if k in r.metrics}
    return {"metrics": {**r.metrics, **chance}, "higher_is_better": r.higher_is_better,
            "benchmarks": {**r.results, "seconds": round(r.seconds, 2), "table": r.table}}


def _perplexity_eval(ctx: RunContext, inputs: Inputs, model: Any, key: str) -> ModelEval:
    """A language model's perplexity on this workspace's validation split, its benchmarks and
    samples."""
    params, version = ctx.params, ctx.data_version
    e = params.evaluate
    metrics = ev.perplexity(model, inputs.paths.tokens, e.ppl_batches, e.batch_size, e.seed,
                            mixture=params.data.mixture)
    meta = json.loads(inputs.paths.token_meta.read_text())
    bench = _benchmarks(inputs, params, version, model)
    return ModelEval(BASE.name, {**metrics, **bench.get("metrics", {})},
                     f"val-{version}-{meta['val_tokens']}-{e.ppl_batches}x{e.batch_size}"
                     f"{bench_hash(params, version)}",
                     key, examples=ev.sample_generations(model, inputs.tokenizer, seed=e.seed),
                     higher_is_better=bench.get("higher_is_better", {}),
                     benchmarks=bench.get("benchmarks", {}))


def _evaluate_base(ctx: RunContext, inputs: Inputs, key: StepKey) -> ModelEval:
    params = ctx.params
    base = inputs.language_model(keys.pretrain(params, ctx.data_version))
    out = _perplexity_eval(ctx, inputs, base, key.digest)
    e = params.evaluate
    if params.model.init_from:
        # Continued pretraining must beat where it started, on the same batches.
        from gpt.data.loader import TokenData
        from gpt.train import initial_model

        start = initial_model(params.model, TokenData(inputs.paths.tokens)).eval()
        before = ev.perplexity(start, inputs.paths.tokens, e.ppl_batches, e.batch_size, e.seed,
                               mixture=params.data.mixture)
        out.metrics.update({f"baseline_{k}": v for k, v in before.items()})
    return out


def _evaluate_task(ctx: RunContext, inputs: Inputs, key: StepKey) -> ModelEval:
    from gpt.finetune import encode_texts, predict

    params = ctx.params
    task = inputs.task
    clf = inputs.classifier(keys.finetune(params, ctx.data_version, ctx.base.digest))
    ids, lengths = encode_texts(inputs.tokenizer, task.test.text.tolist(),
                                params.model.block_size)
    y_pred = predict(clf, ids, lengths).tolist()
    y_true = task.test.label.tolist()
    metrics = ev.classification_metrics(y_true, y_pred, task.labels)
    metrics.update(ev.majority_baseline(task.train.label.tolist(), y_true, task.labels))
    return ModelEval(TASK.name, metrics, task.eval_hash(), key.digest, test_examples=len(y_true),
                     labels=task.labels, unseen_labels=task.unseen,
                     confusion_matrix=ev.confusion_matrix(y_true, y_pred, len(task.labels)))


def _evaluate_sft(ctx: RunContext, inputs: Inputs, key: StepKey) -> ModelEval:
    """SFT metrics on held-out pairs, next to the base model prompted the same way."""
    params, version, base = ctx.params, ctx.data_version, ctx.base
    task = inputs.sft_task
    size = params.evaluate.max_items
    test = task.test[:size] if size else task.test
    prompts, refs = [p for p, _ in test], [c for _, c in test]
    n = params.sft.max_new_tokens
    tuned_model = inputs.language_model(keys.sft(params, version, base.digest))
    bs = params.evaluate.batch_size
    completions = ev.complete(tuned_model, inputs.tokenizer, prompts, n,
                              label="evaluate: SFT completions", batch_size=bs)
    before_model = _base_model(ctx, inputs, base)
    task_type = params.sft.task_type
    before = ev.generation_metrics(ev.complete(before_model, inputs.tokenizer, prompts, n,
                                               label="evaluate: base-model completions",
                                               batch_size=bs), refs, task_type)
    bench = _benchmarks(inputs, params, version, tuned_model)
    metrics = {**ev.generation_metrics(completions, refs, task_type),
               **{f"baseline_{k}": v for k, v in before.items()}, **bench.get("metrics", {})}
    examples = [{"prompt": p, "reference": r, "completion": c} for p, r, c in
                zip(prompts[:10], refs[:10], completions[:10], strict=True)]
    return ModelEval(SFT.name, metrics,
                     f"{task.eval_hash()}-{len(test)}{bench_hash(params, version)}",
                     key.digest, test_examples=len(test), examples=examples,
                     higher_is_better=bench.get("higher_is_better", {}),
                     benchmarks=bench.get("benchmarks", {}))


#: Each model kind's evaluation, by :attr:`gpt.kinds.ModelKind.name`.
EVALUATORS = {BASE.name: _evaluate_base, TASK.name: _evaluate_task, SFT.name: _evaluate_sft}


def model_kinds(params: Params, base: str = "") -> tuple[str, ...]:
    """The models a pipeline run trains, evaluates and registers (no base when one is given)."""
    return tuple(k.name for k in KINDS if (k.tuned or not base)
                 and (k is not SFT or params.sft.enabled))


def evaluate_step(ctx: RunContext) -> dict[str, ModelEval]:
    """Evaluate each model (reusing evaluations whose key is unchanged).

    A registered base (``ctx.base_spec``, as for :func:`finetune_step`) is not evaluated again.

    Raises:
        RegistryError: a non-finite metric (nothing downstream may register it).
    """
    ctx = pin_base(ctx)
    paths = ctx.paths
    inputs = Inputs(paths, ctx.params)
    start = ctx.base
    verify_outputs(ctx.workdir)
    out: dict[str, ModelEval] = {}
    for kind in model_kinds(ctx.params, ctx.base_spec):
        key = keys.evaluation(kind, ctx.params, ctx.data_version, start.digest)
        done = paths.read_result(key)
        if done is not None:
            log.info("evaluate %s: reused (key %s)", kind, key.short)
            out[kind] = ModelEval(**done)
        else:
            out[kind] = EVALUATORS[kind](ctx, inputs, key)
            require_finite(out[kind].metrics, f"{kind} model evaluation")
            paths.write_result(key, asdict(out[kind]))
    _write_dvc_views(ctx, out)
    return out


def _write_dvc_views(ctx: RunContext, evaluation: dict[str, ModelEval]) -> None:
    """The metrics and the pretraining curve as the files dvc.yaml declares (dvc_views)."""
    from gpt.pipeline import dvc_views

    dvc_views.write_metrics(ctx.workdir, evaluation)
    if ctx.base.pretrained_here:
        done = ctx.paths.read_result(keys.pretrain(ctx.params, ctx.data_version))
        dvc_views.write_curve(ctx.workdir, ctx.tracking_uri, (done or {}).get("run_id"))


def evaluate_base_step(ctx: RunContext) -> ModelEval:
    """Evaluate this run's pretrained base only (reused when its key is unchanged): what
    :func:`evaluate_step` computes for it, e.g. for each trial of a study."""
    paths = ctx.paths
    key = keys.evaluation(BASE.name, ctx.params, ctx.data_version)
    done = paths.read_result(key)
    if done is not None:
        log.info("evaluate base: reused (key %s)", key.short)
        return ModelEval(**done)
    out = _evaluate_base(ctx, Inputs(paths, ctx.params), key)
    require_finite(out.metrics, "base model evaluation")
    paths.write_result(key, asdict(out))
    return out


def import_step(ctx: RunContext, spec: str) -> Registration:
    """Register the pretrained checkpoint ``spec`` (``hf:<dir or id>``) as a base version.

    It is evaluated on this workspace's validation split like a trained base, so a later
    continued pretraining from it is compared with it (same evaluation set) and must beat it.
    ``ctx.tracking`` must be set.

    Raises:
        ConfigError: the checkpoint's shape or tokenizer does not match the workspace.
    """
    from gpt.data.loader import TokenData
    from gpt.hf import checkpoint_digest
    from gpt.train import initial_model

    assert ctx.tracking is not None
    params = ctx.params.model_copy(update={"model": ctx.params.model.model_copy(
        update={"init_from": spec})})
    ctx = replace(ctx, params=params)
    built = candidates.Context(ctx.paths, params, ctx.data_version, ctx.tracking)
    model = initial_model(params.model, TokenData(ctx.paths.tokens)).eval()
    eval_key = f"import-{checkpoint_digest(spec)[:16]}"
    e = _perplexity_eval(ctx, built.inputs, model, eval_key)
    tags = {**ctx.tracking.tags, **lineage(params, ctx.data_version,
                                           ctx.tracking.tags.get(tag.FLOW_RUN),
                                           ctx.tracking.tags.get(tag.FLOW_RUN_URL, ""))}
    c = candidates.imported(built, e, model, tags)
    with progress.phase(f"register {c.name}"):
        return register(c, ctx.tracking)


def register_checkpoint_step(ctx: RunContext, step: int | None = None) -> Registration:
    """Register a kept checkpoint of this workspace's pretraining (for its data and params) as
    a version of the base model: the one at optimizer ``step``, or (None) the one whose logged
    model (:mod:`gpt.registry.checkpoints`) has the lowest validation loss.

    It is evaluated as a trained base is (the same evaluation set), tagged with the pipeline
    run's lineage and its step, logged model and run, and gated like any candidate.
    ``ctx.tracking`` must be set.

    Raises:
        ConfigError: no checkpoints of this pretraining, none at ``step`` or none with a logged
            validation loss (listing the kept steps).
        CheckpointError: the checkpoint's files do not match their manifest.
    """
    from gpt import checkpoint as ckpt
    from gpt.registry import checkpoints as logged
    from gpt.train import build_model

    assert ctx.tracking is not None
    params = ctx.params
    key = keys.pretrain(params, ctx.data_version)
    folder = ctx.paths.step(key) / "checkpoints"
    on_disk = {int(p.name.removeprefix("ckpt-")): p for p in ckpt.list_checkpoints(folder)}
    if not on_disk:
        raise ConfigError(f"no checkpoints of pretrain (key {key.short}) for these data and "
                          f"params in {folder}: run `gptops pretrain` (or `gptops run`) with "
                          "the same --profile and --set values first")
    steps_kept = ", ".join(map(str, sorted(on_disk)))
    models = {logged.step_of(m): m for m in reversed(
        logged.kept(ctx.tracking.uri, ctx.tracking.experiment, key.digest))}
    if step is None:
        ranked = sorted((m for s, m in models.items() if s in on_disk and
                         logged.metric(m) is not None), key=logged.metric)
        if not ranked:
            raise ConfigError(f"no kept checkpoint of pretrain (key {key.short}) has a logged "
                              f"validation loss; name one: gptops register-checkpoint STEP "
                              f"(kept: {steps_kept})")
        step = logged.step_of(ranked[0])
    if step not in on_disk:
        raise ConfigError(f"pretrain (key {key.short}) has no kept checkpoint at step {step}; "
                          f"kept: {steps_kept}")
    inputs = Inputs(ctx.paths, params)
    model = build_model(params.model, inputs.vocab_size)
    ckpt.load_checkpoint(on_disk[step], model)
    model.eval()
    eval_key = f"{keys.evaluation(BASE.name, params, ctx.data_version).digest}-step{step}"
    e = _perplexity_eval(ctx, inputs, model, eval_key)
    found = models.get(step)
    tags = {**ctx.tracking.tags, tag.CHECKPOINT_STEP: str(step),
            **({tag.CHECKPOINT_MODEL: found.model_id, tag.CHECKPOINT_RUN: found.source_run_id}
               if found is not None else {})}
    built = candidates.Context(ctx.paths, params, ctx.data_version, ctx.tracking)
    c = candidates.checkpoint(built, e, model, key, step, tags)
    with progress.phase(f"register {c.name} (pretrain checkpoint at step {step})"):
        return register(c, ctx.tracking)


def register_step(ctx: RunContext, evaluation: dict[str, ModelEval]) -> dict[str, Registration]:
    """Register every evaluated model (base first: the others name it as their parent).

    ``ctx.tracking`` must be set."""
    assert ctx.tracking is not None
    ctx = pin_base(ctx)
    start = ctx.base
    built = candidates.Context(ctx.paths, ctx.params, ctx.data_version, ctx.tracking,
                               None if start.pretrained_here else start.digest)
    results: dict[str, Registration] = {}
    for kind, e in evaluation.items():
        here = results.get(BASE.name)
        parent = f"{candidates.model_name(BASE.name, ctx.params)}/{here.version}" if here \
            else start.lineage
        c = candidates.build(built, e, parent or None)
        with progress.phase(f"register {c.name}"):
            results[kind] = register(c, ctx.tracking)
    return results
