"""Pipeline steps as plain functions: the one API both the CLI and the Prefect tasks call.

Each training step is keyed by exactly what it reads (:mod:`gpt.pipeline.keys`) and keeps its
outputs in ``.gptops/runs/<step>/<key>/``. A step whose key is unchanged and finished is reused,
and says so ("pretrain: reused (key 3f2a…)"); an unfinished one resumes from its checkpoints.
Training steps open one nested MLflow run each, under the pipeline's parent run, which ends when
the step ends. Evaluation is cached the same way, per model. Registration turns each evaluated
model into a :class:`~gpt.registry.Candidate` and gates it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpt import evaluate as ev
from gpt import progress
from gpt.config import Params
from gpt.evaluate import ModelEval
from gpt.pipeline import candidates, keys
from gpt.pipeline.keys import StepKey
from gpt.pipeline.paths import Inputs, RunPaths
from gpt.registry import (
    Dataset,
    MetricsLogger,
    Registration,
    Tracking,
    child_run,
    register,
    require_finite,
)

log = logging.getLogger(__name__)

#: The metric prefix of each training step in MLflow.
METRIC_PREFIX = {"pretrain": "train/", "finetune": "finetune/", "sft": "sft/"}


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


def lineage(params: Params, data_version: str, flow_run_id: str | None) -> dict[str, str]:
    """Tags every run and model version of a pipeline run carries."""
    from gpt.workspace import git_commit

    return {"data_version": data_version, "git_commit": git_commit(),
            "prefect_flow_run_id": flow_run_id or "none", "profile": params.profile}


def _flat(reads: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in reads.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


@contextmanager
def _tracked(tracking: Tracking | None, key: StepKey, paths: RunPaths,
             data_version: str) -> Iterator[tuple[str | None, Any]]:
    """(run id, metrics callback) of the step's child run; (None, None) without tracking."""
    if tracking is None:
        yield None, None
        return
    tags = {"gptops.step": key.step, "step_key": key.digest}
    data = Dataset(name=f"tokens-{data_version}", digest=data_version,
                   source=str(paths.tokens.resolve()))
    with child_run(tracking, f"{key.step} {key.short}", tags, _flat(key.reads), data) as run_id:
        callback = MetricsLogger(tracking.uri, run_id, prefix=METRIC_PREFIX[key.step])
        yield run_id, callback
        callback.flush()


def _train(key: StepKey, paths: RunPaths, data_version: str, tracking: Tracking | None,
           fit: Callable[[Path, Any], dict[str, Any]]) -> StepResult:
    done = paths.read_result(key)
    if done is not None:
        log.info("%s: reused (key %s): finished earlier in %s", key.step, key.short,
                 paths.step(key))
        return StepResult(**{**done, "reused": True})
    out = paths.step(key)
    with _tracked(tracking, key, paths, data_version) as (run_id, callback):
        fields = fit(out, callback)
    result = StepResult(step=key.step, key=key.digest, reused=False, out_dir=str(out),
                        run_id=run_id, tracking_uri=tracking.uri if tracking else "", **fields)
    paths.write_result(key, asdict(result))
    return result


def _loop_fields(loop: Any, **extra: Any) -> dict[str, Any]:
    return {"steps": loop.steps, "resumed_from": loop.resumed_from,
            "seconds": round(loop.seconds, 2), "tokens_per_sec": round(loop.tokens_per_sec, 1),
            "loss": loop.final_loss, **extra}


def pretrain_step(workdir: Path, params: Params, data_version: str,
                  tracking: Tracking | None = None) -> StepResult:
    """Pretrain the base model (or reuse / resume the one trained with this key)."""
    from gpt.train import pretrain

    paths = RunPaths(Path(workdir))

    def fit(out: Path, callback: Any) -> dict[str, Any]:
        r = pretrain(params.model, params.train, paths.tokens, out, resume=True,
                     callback=callback)
        return {**_loop_fields(r.loop, device=r.device, info={
            "skipped_steps": r.loop.skipped_steps}), "loss": r.val_loss}

    return _train(keys.pretrain(params, data_version), paths, data_version, tracking, fit)


#: tune(inputs, base model, output folder, metrics callback) -> StepResult fields
Tune = Callable[[Inputs, Any, Path, Any], dict[str, Any]]


def _on_base(workdir: Path, params: Params, data_version: str, tracking: Tracking | None,
             key: StepKey, tune: Tune) -> StepResult:
    """A step that tunes the pretrained base; without a finished base it fails before any run."""
    from gpt.train import resolve_device

    paths = RunPaths(Path(workdir))
    inputs = Inputs(paths, params)
    base = keys.pretrain(params, data_version)
    if paths.read_result(key) is None:
        inputs.weights(base)

    def fit(out: Path, callback: Any) -> dict[str, Any]:
        fields = tune(inputs, inputs.language_model(base), out, callback)
        return {**fields, "device": str(resolve_device(params.train.device))}

    return _train(key, paths, data_version, tracking, fit)


def finetune_step(workdir: Path, params: Params, data_version: str,
                  tracking: Tracking | None = None) -> StepResult:
    """Fine-tune the pretrained base as a classifier (finetune.task: package or file)."""
    from gpt.finetune import finetune_classifier

    def tune(inputs: Inputs, base: Any, out: Path, callback: Any) -> dict[str, Any]:
        task = inputs.task
        r = finetune_classifier(base, inputs.tokenizer, task, params.finetune, out,
                                device_name=params.train.device, callback=callback)
        return _loop_fields(r.loop, info={"train_examples": len(task.train),
                                          "test_examples": len(task.test),
                                          "labels": task.labels})

    return _on_base(workdir, params, data_version, tracking,
                    keys.finetune(params, data_version), tune)


def sft_step(workdir: Path, params: Params, data_version: str,
             tracking: Tracking | None = None) -> StepResult:
    """Supervised fine-tuning of the base LM on prompt/completion pairs (prompt masked)."""
    from gpt.finetune import finetune_sft

    def tune(inputs: Inputs, base: Any, out: Path, callback: Any) -> dict[str, Any]:
        task = inputs.sft_task
        r = finetune_sft(base, inputs.tokenizer, task.train, params.sft, out,
                         device_name=params.train.device, callback=callback)
        return _loop_fields(r.loop, info={"train_pairs": len(task.train),
                                          "test_pairs": len(task.test)})

    return _on_base(workdir, params, data_version, tracking, keys.sft(params, data_version),
                    tune)


# --- evaluation ---------------------------------------------------------------------------------


def _evaluate_base(inputs: Inputs, params: Params, data_version: str, key: StepKey) -> ModelEval:
    base = inputs.language_model(keys.pretrain(params, data_version))
    e = params.evaluate
    metrics = ev.perplexity(base, inputs.paths.tokens, e.ppl_batches, e.batch_size, e.seed)
    meta = json.loads(inputs.paths.token_meta.read_text())
    return ModelEval("base", metrics,
                     f"val-{data_version}-{meta['val_tokens']}-{e.ppl_batches}x{e.batch_size}",
                     key.digest, examples=ev.sample_generations(base, inputs.tokenizer,
                                                                 seed=e.seed))


def _evaluate_task(inputs: Inputs, params: Params, data_version: str, key: StepKey) -> ModelEval:
    from gpt.finetune import encode_texts, predict

    task = inputs.task
    clf = inputs.classifier(keys.finetune(params, data_version))
    ids, lengths = encode_texts(inputs.tokenizer, task.test.text.tolist(),
                                params.model.block_size)
    y_pred = predict(clf, ids, lengths).tolist()
    y_true = task.test.label.tolist()
    metrics = ev.classification_metrics(y_true, y_pred, task.labels)
    metrics.update(ev.majority_baseline(task.train.label.tolist(), y_true, task.labels))
    return ModelEval("task", metrics, task.eval_hash(), key.digest, test_examples=len(y_true),
                     labels=task.labels, unseen_labels=task.unseen,
                     confusion_matrix=ev.confusion_matrix(y_true, y_pred, len(task.labels)))


def _evaluate_sft(inputs: Inputs, params: Params, data_version: str, key: StepKey) -> ModelEval:
    """SFT metrics on held-out pairs, next to the base model prompted the same way."""
    task = inputs.sft_task
    test = task.test[:params.sft.eval_examples]
    prompts, refs = [p for p, _ in test], [c for _, c in test]
    n = params.sft.max_new_tokens
    tuned_model = inputs.language_model(keys.sft(params, data_version))
    completions = ev.complete(tuned_model, inputs.tokenizer, prompts, n,
                              label="evaluate: SFT completions")
    base = inputs.language_model(keys.pretrain(params, data_version))
    before = ev.generation_metrics(ev.complete(base, inputs.tokenizer, prompts, n,
                                               label="evaluate: base-model completions"), refs)
    metrics = {**ev.generation_metrics(completions, refs),
               **{f"baseline_{k}": v for k, v in before.items()}}
    examples = [{"prompt": p, "reference": r, "completion": c} for p, r, c in
                zip(prompts[:10], refs[:10], completions[:10], strict=True)]
    return ModelEval("sft", metrics, f"{task.eval_hash()}-{len(test)}", key.digest,
                     test_examples=len(test), examples=examples)


EVALUATORS = {"base": _evaluate_base, "task": _evaluate_task, "sft": _evaluate_sft}


def model_kinds(params: Params) -> tuple[str, ...]:
    """The models a pipeline run trains, evaluates and registers."""
    return ("base", "task", "sft") if params.sft.enabled else ("base", "task")


def evaluate_step(workdir: Path, params: Params, data_version: str) -> dict[str, ModelEval]:
    """Evaluate each model (reusing evaluations whose key is unchanged).

    Raises:
        RegistryError: a non-finite metric (nothing downstream may register it).
    """
    paths = RunPaths(Path(workdir))
    inputs = Inputs(paths, params)
    out: dict[str, ModelEval] = {}
    for kind in model_kinds(params):
        key = keys.evaluation(kind, params, data_version)
        done = paths.read_result(key)
        if done is not None:
            log.info("evaluate %s: reused (key %s)", kind, key.short)
            out[kind] = ModelEval(**done)
        else:
            out[kind] = EVALUATORS[kind](inputs, params, data_version, key)
            require_finite(out[kind].metrics, f"{kind} model evaluation")
            paths.write_result(key, asdict(out[kind]))
    return out


def register_step(workdir: Path, params: Params, data_version: str, tracking: Tracking,
                  evaluation: dict[str, ModelEval]) -> dict[str, Registration]:
    """Register every evaluated model (base first: the others name it as their parent)."""
    ctx = candidates.Context(RunPaths(Path(workdir)), params, data_version, tracking)
    results: dict[str, Registration] = {}
    for kind, e in evaluation.items():
        parent = results.get("base")
        c = candidates.build(ctx, e, parent.version if parent else None)
        with progress.phase(f"register {c.name}"):
            results[kind] = register(c, tracking)
    return results
