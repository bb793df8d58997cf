"""Pipeline steps as plain functions: the single API both the CLI and the Prefect tasks call.

Each step takes the workspace and resolved ``Params``, does one job over the library, and returns
a small JSON-serialisable dict (so orchestrators can persist and display it). Training outputs
live under ``<workdir>/.gptops/runs/<data_version>-<config_hash>/``: re-running with the same data
and config resumes from (or finds) the finished checkpoints instead of training again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from gpt import checkpoint as ckpt
from gpt import evaluate as ev
from gpt import progress, registry
from gpt.config import Params
from gpt.data.stages import CLEAN, CLEAN_STATS, TOKENS
from gpt.data.tokenizer import EOT, PAD, load_hf_tokenizer, load_tokenizer
from gpt.finetune import (
    GPTClassifier,
    SFTTask,
    build_docsummary_task,
    build_sft_file_task,
    build_task,
    encode_texts,
    finetune_classifier,
    finetune_sft,
    predict,
)
from gpt.train import build_model, pretrain

log = logging.getLogger(__name__)


#: The params sections logged with each model's MLflow run.
RUN_SECTIONS = {"base": "train", "task": "finetune", "sft": "sft"}


def run_dir(workdir: Path, data_version: str, params: Params) -> Path:
    return Path(workdir) / ".gptops" / "runs" / f"{data_version}-{params.config_hash()}"


def lineage_tags(params: Params, data_version: str, flow_run_id: str | None) -> dict[str, str]:
    from gpt.workspace import git_commit

    return {"data_version": data_version, "git_commit": git_commit(),
            "config_hash": params.config_hash(), "prefect_flow_run_id": flow_run_id or "none",
            "profile": params.profile}


def _flat_params(params: Params, sections: tuple[str, ...]) -> dict[str, Any]:
    dump = params.model_dump(mode="json")
    return {f"{s}.{k}": v for s in sections for k, v in dump[s].items()}


def open_run(tracking_uri: str, params: Params, kind: str, data_version: str,
             flow_run_id: str | None) -> str:
    """Open the MLflow run of one model (``base``, ``task`` or ``sft``) before it trains."""
    return registry.start_run(tracking_uri, params.registry.experiment, f"{kind}-{data_version}",
                              lineage_tags(params, data_version, flow_run_id),
                              _flat_params(params, ("model", RUN_SECTIONS[kind])))


def _load_base(out_dir: Path, params: Params, vocab_size: int):
    model = build_model(params.model, vocab_size)
    ckpt.load_weights(model, out_dir / "model.safetensors")
    return model.eval()


def pretrain_step(workdir: Path, params: Params, data_version: str, tracking_uri: str,
                  mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Pretrain the base model (resuming from the newest valid checkpoint of this data+config)."""
    out = run_dir(workdir, data_version, params) / "pretrain"
    callback = (registry.MetricsLogger(tracking_uri, mlflow_run_id, prefix="train/")
                if mlflow_run_id else None)
    result = pretrain(params.model, params.train, Path(workdir) / TOKENS, out, resume=True,
                      callback=callback)
    if callback:
        callback.flush()
    return {"out_dir": str(out), "steps": result.loop.steps,
            "resumed_from": result.loop.resumed_from, "val_loss": result.val_loss,
            "seconds": round(result.loop.seconds, 2),
            "tokens_per_sec": round(result.loop.tokens_per_sec, 1), "device": result.device,
            "skipped_steps": result.loop.skipped_steps}


def finetune_step(workdir: Path, params: Params, data_version: str, tracking_uri: str,
                  mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Fine-tune the pretrained base on the built-in package-classification task."""
    workdir = Path(workdir)
    base_dir = run_dir(workdir, data_version, params) / "pretrain"
    out = run_dir(workdir, data_version, params) / "finetune"
    tok = load_tokenizer(workdir / TOKENS / "tokenizer.json")
    task = build_task(params.finetune, pd.read_parquet(workdir / CLEAN / "docs.parquet"))
    base = _load_base(base_dir, params, tok.get_vocab_size())
    callback = (registry.MetricsLogger(tracking_uri, mlflow_run_id, prefix="finetune/")
                if mlflow_run_id else None)
    result = finetune_classifier(base, tok, task, params.finetune, out,
                                 device_name=params.train.device, callback=callback)
    if callback:
        callback.flush()
    return {"out_dir": str(out), "steps": result.loop.steps,
            "resumed_from": result.loop.resumed_from, "final_loss": result.loop.final_loss,
            "train_examples": len(task.train), "test_examples": len(task.test),
            "seconds": round(result.loop.seconds, 2), "labels": task.labels}


def sft_task(workdir: Path, params: Params) -> SFTTask:
    """The configured SFT pairs: built-in docsummary or the user's prompt,completion file."""
    c = params.sft
    if c.task == "file":
        return build_sft_file_task(c.task_path, c.test_fraction, c.seed)
    return build_docsummary_task(pd.read_parquet(Path(workdir) / CLEAN / "docs.parquet"),
                                 c.test_fraction, c.seed)


def sft_step(workdir: Path, params: Params, data_version: str, tracking_uri: str,
             mlflow_run_id: str | None = None) -> dict[str, Any]:
    """Supervised fine-tuning of the base LM on prompt/completion pairs (prompt masked)."""
    workdir = Path(workdir)
    rd = run_dir(workdir, data_version, params)
    tok = load_tokenizer(workdir / TOKENS / "tokenizer.json")
    task = sft_task(workdir, params)
    base = _load_base(rd / "pretrain", params, tok.get_vocab_size())
    callback = (registry.MetricsLogger(tracking_uri, mlflow_run_id, prefix="sft/")
                if mlflow_run_id else None)
    result = finetune_sft(base, tok, task.train, params.sft, rd / "sft",
                          device_name=params.train.device, callback=callback)
    if callback:
        callback.flush()
    return {"out_dir": str(rd / "sft"), "steps": result.loop.steps,
            "resumed_from": result.loop.resumed_from, "train_pairs": len(task.train),
            "test_pairs": len(task.test), "seconds": round(result.loop.seconds, 2)}


def _evaluate_sft(workdir: Path, params: Params, rd: Path, tok, base) -> dict[str, Any]:
    """SFT metrics on held-out pairs, next to the base model prompted the same way."""
    task = sft_task(workdir, params)
    test = task.test[:params.sft.eval_examples]
    prompts, refs = [p for p, _ in test], [c for _, c in test]
    sft_model = _load_base(rd / "sft", params, tok.get_vocab_size())
    n = params.sft.max_new_tokens
    completions = ev.complete(sft_model, tok, prompts, n, label="evaluate: SFT completions")
    tuned = ev.generation_metrics(completions, refs)
    before = ev.generation_metrics(
        ev.complete(base, tok, prompts, n, label="evaluate: base-model completions"), refs)
    metrics = {**tuned, **{f"baseline_{k}": v for k, v in before.items()}}
    examples = [{"prompt": p, "reference": r, "completion": c} for p, r, c in
                zip(prompts[:10], refs[:10], completions[:10], strict=True)]
    return {"sft": metrics, "sft_eval_hash": f"{task.eval_hash()}-{len(test)}",
            "sft_examples": examples, "sft_test_pairs": len(test)}


def _load_classifier(workdir: Path, params: Params, data_version: str, num_labels: int,
                     ) -> GPTClassifier:
    tok = load_tokenizer(Path(workdir) / TOKENS / "tokenizer.json")
    body = build_model(params.model, tok.get_vocab_size())
    clf = GPTClassifier(body, num_labels, tok.token_to_id(PAD))
    ckpt.load_weights(clf, run_dir(workdir, data_version, params) / "finetune" /
                      "model.safetensors")
    return clf.eval()


def evaluate_step(workdir: Path, params: Params, data_version: str) -> dict[str, Any]:
    """Base perplexity and samples; task accuracy/macro-F1 next to the majority baseline."""
    workdir = Path(workdir)
    tok = load_tokenizer(workdir / TOKENS / "tokenizer.json")
    rd = run_dir(workdir, data_version, params)
    base = _load_base(rd / "pretrain", params, tok.get_vocab_size())
    e = params.evaluate
    base_metrics = ev.perplexity(base, workdir / TOKENS, e.ppl_batches, e.batch_size, e.seed)
    samples = ev.sample_generations(base, tok, seed=e.seed)
    meta = json.loads((workdir / TOKENS / "meta.json").read_text())
    base_eval_hash = f"val-{data_version}-{meta['val_tokens']}-{e.ppl_batches}x{e.batch_size}"
    out: dict[str, Any] = {"base": base_metrics, "base_eval_hash": base_eval_hash,
                           "samples": samples}
    task = build_task(params.finetune, pd.read_parquet(workdir / CLEAN / "docs.parquet"))
    clf = _load_classifier(workdir, params, data_version, len(task.labels))
    ids, lengths = encode_texts(tok, task.test.text.tolist(), params.model.block_size)
    y_pred = predict(clf, ids, lengths).tolist()
    y_true = task.test.label.tolist()
    task_metrics = ev.classification_metrics(y_true, y_pred, task.labels)
    task_metrics.update(ev.majority_baseline(task.train.label.tolist(), y_true, task.labels))
    out.update({"task": task_metrics, "task_eval_hash": task.eval_hash(), "labels": task.labels,
                "task_test_examples": len(y_true), "task_unseen_labels": task.unseen,
                "confusion_matrix": ev.confusion_matrix(y_true, y_pred, len(task.labels))})
    if params.sft.enabled:
        out.update(_evaluate_sft(workdir, params, rd, tok, base))
        ev.check_finite(out["sft"], "SFT model evaluation")
    ev.check_finite(base_metrics, "base model evaluation")
    ev.check_finite(task_metrics, "task model evaluation")
    (rd / "evaluation.json").write_text(json.dumps(out, indent=2))
    return out


def _existing_version(tracking_uri: str, name: str, tags: dict[str, str]) -> dict | None:
    """A version already registered from the same data, config and code (a no-op re-run)."""
    if tags["git_commit"].endswith("-dirty") or tags["git_commit"] == "unknown":
        return None
    keys = ("data_version", "config_hash", "git_commit")
    try:
        versions = registry.list_versions(tracking_uri, name)
    except Exception:  # noqa: BLE001 - model not registered yet
        return None
    for v in versions:
        if all(v["tags"].get(k) == tags[k] for k in keys):
            return v
    return None


def register_step(workdir: Path, params: Params, data_version: str, tracking_uri: str,
                  evaluation: dict[str, Any], flow_run_id: str | None = None,
                  base_run_id: str | None = None, task_run_id: str | None = None,
                  sft_run_id: str | None = None) -> dict[str, Any]:
    """Register base, task (and SFT) models in MLflow with lineage; apply the promotion gate."""
    from gpt.hf import to_hf_classifier, to_hf_lm

    workdir = Path(workdir)
    rd = run_dir(workdir, data_version, params)
    tok_path = workdir / TOKENS / "tokenizer.json"
    hf_tok = load_hf_tokenizer(tok_path)
    # Consumers (pipelines, `mlflow models serve`) truncate to what the model can see.
    hf_tok.model_max_length = params.model.block_size
    eot, pad = hf_tok.convert_tokens_to_ids(EOT), hf_tok.convert_tokens_to_ids(PAD)
    tags = lineage_tags(params, data_version, flow_run_id)
    reg = params.registry
    results: dict[str, Any] = {}

    kinds = ("base", "task", "sft") if "sft" in evaluation else ("base", "task")
    names = {"base": reg.base_model, "task": reg.task_model, "sft": reg.sft_model}
    run_ids = {"base": base_run_id, "task": task_run_id, "sft": sft_run_id}
    for kind in kinds:
        name = names[kind]
        existing = _existing_version(tracking_uri, name, tags)
        run_id = run_ids[kind]
        if existing:
            if run_id is not None:
                registry.finish_run(tracking_uri, run_id)
            results[kind] = {"name": name, "version": existing["version"], "champion":
                             "champion" in existing["aliases"], "reused": True,
                             "reason": "identical data, config and code: existing version "
                                       "reused, nothing registered"}
            continue
        if run_id is None:
            run_id = open_run(tracking_uri, params, kind, data_version, flow_run_id)
        parent = results.get("base", {}).get("version")
        if kind == "base":
            metrics = dict(evaluation["base"])
            vocab = load_tokenizer(tok_path).get_vocab_size()
            model = to_hf_lm(_load_base(rd / "pretrain", params, vocab), eot, pad)
            v_tags = {**tags, "eval_hash": evaluation["base_eval_hash"]}
            primary, higher, task_name = "val_ppl", False, "text-generation"
            baseline = float(vocab)  # a uniform guess over the vocabulary
            registry.log_table(tracking_uri, run_id, evaluation["samples"],
                               "samples/generations.json")
            registry.log_artifacts(tracking_uri, run_id, {
                "data": workdir / CLEAN_STATS, "data_report": workdir / CLEAN / "report.md",
                "tokenizer": tok_path})
        elif kind == "sft":
            metrics = dict(evaluation["sft"])
            vocab = load_tokenizer(tok_path).get_vocab_size()
            model = to_hf_lm(_load_base(rd / "sft", params, vocab), eot, pad)
            v_tags = {**tags, "eval_hash": evaluation["sft_eval_hash"],
                      "parent_model_version": f"{reg.base_model}/{parent}"}
            primary, higher, task_name = "rouge_l", True, "text-generation"
            baseline = metrics["baseline_rouge_l"]  # the base model prompted the same way
            registry.log_table(tracking_uri, run_id, evaluation["sft_examples"],
                               "eval/sft_examples.json")
        else:
            metrics = {k: v for k, v in evaluation["task"].items()
                       if k in ("accuracy", "macro_f1", "baseline_accuracy",
                                "baseline_macro_f1")}
            clf = _load_classifier(workdir, params, data_version, len(evaluation["labels"]))
            model = to_hf_classifier(clf.body, clf.score, evaluation["labels"], eot, pad)
            v_tags = {**tags, "eval_hash": evaluation["task_eval_hash"],
                      "parent_model_version": f"{reg.base_model}/{parent}"}
            primary, higher, task_name = "macro_f1", True, "text-classification"
            baseline = metrics["baseline_macro_f1"]  # always predicting the majority class
            registry.log_dict(tracking_uri, run_id, evaluation["task"], "eval/task_metrics.json")
            if evaluation.get("task_unseen_labels"):
                registry.log_dict(tracking_uri, run_id, evaluation["task_unseen_labels"],
                                  "eval/unseen_test_labels.json")
            _log_task_report(tracking_uri, run_id, evaluation, rd / "eval")
        with progress.phase(f"register {name}"):
            results[kind] = _register_one(tracking_uri, run_id, name, kind, model, hf_tok,
                                          task_name, metrics, v_tags, primary, higher, baseline,
                                          params)
    return results


def _register_one(tracking_uri: str, run_id: str, name: str, kind: str, model, hf_tok,
                  task_name: str, metrics: dict[str, float], v_tags: dict[str, str],
                  primary: str, higher: bool, baseline: float, params: Params) -> dict[str, Any]:
    """Log metrics, compare with the champion, register and gate one model."""
    reg = params.registry
    registry.log_metrics(tracking_uri, run_id, metrics)
    # Read before registering: registering may move the champion alias to this version.
    comparison = ev.compare_to_champion(metrics, v_tags["eval_hash"],
                                        registry.champion_metrics(tracking_uri, name))
    registry.log_dict(tracking_uri, run_id, comparison, "eval/champion_comparison.json")
    log.info("%s vs champion: %s", name, comparison["note"])
    description = _model_card(kind, name, v_tags, metrics, params, comparison)
    r = registry.register_model(tracking_uri, run_id, name, model, hf_tok, task_name,
                                metrics, v_tags, primary, higher, reg.min_improvement,
                                description, baseline=baseline, license_id=reg.license)
    registry.finish_run(tracking_uri, run_id)
    return {**asdict(r), "reused": False}


def _log_task_report(tracking_uri: str, run_id: str, evaluation: dict[str, Any],
                     out_dir: Path) -> None:
    """Confusion-matrix image and per-class table as artifacts of the task model's run."""
    cm = evaluation.get("confusion_matrix")
    if cm is None:  # an evaluation from before confusion matrices were recorded
        return
    labels = evaluation["labels"]
    png = ev.plot_confusion_matrix(cm, labels, out_dir / "confusion_matrix.png")
    registry.log_artifacts(tracking_uri, run_id, {"eval": png})
    registry.log_dict(tracking_uri, run_id, {"labels": labels, "matrix": cm},
                      "eval/confusion_matrix.json")
    registry.log_table(tracking_uri, run_id,
                       ev.per_class_table(evaluation["task"], labels, cm), "eval/per_class.json")


def _model_card(kind: str, name: str, tags: dict[str, str], metrics: dict[str, float],
                params: Params, comparison: dict | None = None) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(metrics.items()))
    versus = f"{ev.comparison_markdown(comparison)}\n" if comparison else ""
    lineage = "\n".join(f"- **{k}**: `{v}`" for k, v in sorted(tags.items()))
    m = params.model
    return (f"# {name} ({kind})\n\nGPT decoder, {m.n_layer} layers, {m.n_head} heads, "
            f"{m.n_embd} dims, context {m.block_size}; profile `{params.profile}`.\n\n"
            f"## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n{versus}"
            f"## Lineage\n\n{lineage}\n\n"
            "Reproduce: check out `git_commit`, `dvc pull`, then `gptops run` with the same "
            "profile.\n")
