"""One Prefect task per pipeline step, each a single call into ``gpt``.

Retries where I/O can fail transiently (DVC remote, MLflow), and once on training steps: they
resume from their own checkpoints, so a retry after a crash continues instead of starting over
(input errors are not retried). Data steps are cached by DVC (an unchanged stage is reused, and
the task says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from gpt import registry, steps, workspace
from gpt.config import Params, load_params
from gpt.data.stages import CLEAN
from gpt.errors import GptopsError
from gpt.preflight import check_run


def not_input_error(task, task_run, state) -> bool:
    """Retry crashes (killed worker, I/O) but not input errors, which would fail again."""
    return not isinstance(state.data, GptopsError)


@task(name="prepare-workspace", task_run_name="prepare-workspace", cache_policy=NO_CACHE)
def prepare_workspace(workdir: str, profile: str, overrides: list[str],
                      save: bool = False) -> Params:
    """Make the folder a DVC workspace, check every input, write this run's data overrides."""
    ws = workspace.ensure_workspace(Path(workdir))
    params = load_params(ws / "params.yaml", profile, overrides)  # bad input: fail before work
    check_run(params, registry.resolve_tracking_uri(params.registry.tracking_uri, ws))
    rest = workspace.apply_run_overrides(ws, overrides, save=save)
    return load_params(ws / "params.yaml", profile, rest)


@task(name="restore-params", task_run_name="restore-params", cache_policy=NO_CACHE)
def restore_params(workdir: str) -> bool:
    """Put the workspace's params.yaml back as it was before this run's one-off overrides."""
    return workspace.restore_params(Path(workdir))


@task(name="data-stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def data_stage(workdir: str, stage: str, force: bool = False) -> dict[str, Any]:
    """Reproduce one DVC stage (ingest, clean or tokenize) if its inputs changed."""
    outcome = workspace.run_stage(Path(workdir), stage, force=force)
    report = Path(workdir) / CLEAN / "report.md"
    if stage == "clean" and report.is_file():
        create_markdown_artifact(report.read_text(encoding="utf-8"), key="cleaning-report",
                                 description="documents kept/rejected per reason, PII, dedup")
    return {"stage": outcome.stage, "ran": outcome.ran}


@task(name="version-data", task_run_name="version-data", retries=2, retry_delay_seconds=5,
      cache_policy=NO_CACHE)
def version_data(workdir: str) -> str:
    """Push the data outputs to the DVC remote and return the data version."""
    workspace.push(Path(workdir))
    return workspace.data_version(Path(workdir))


@task(name="start-mlflow-run", task_run_name="start-mlflow-run-{kind}", retries=2,
      retry_delay_seconds=5, cache_policy=NO_CACHE)
def start_mlflow_run(tracking_uri: str, params: Params, kind: str, data_version: str,
                     flow_run_id: str | None) -> str:
    """Open the MLflow run that a model's training metrics stream into."""
    return steps.open_run(tracking_uri, params, kind, data_version, flow_run_id)


@task(name="pretrain", task_run_name="pretrain", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5,
      retry_condition_fn=not_input_error)
def pretrain(workdir: str, params: Params, data_version: str, tracking_uri: str,
             run_id: str) -> dict[str, Any]:
    """Pretrain the base GPT by next-token prediction."""
    return steps.pretrain_step(Path(workdir), params, data_version, tracking_uri, run_id)


@task(name="finetune", task_run_name="finetune", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5,
      retry_condition_fn=not_input_error)
def finetune(workdir: str, params: Params, data_version: str, tracking_uri: str,
             run_id: str) -> dict[str, Any]:
    """Fine-tune the base on the package-classification task."""
    return steps.finetune_step(Path(workdir), params, data_version, tracking_uri, run_id)


@task(name="sft", task_run_name="sft", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5,
      retry_condition_fn=not_input_error)
def sft(workdir: str, params: Params, data_version: str, tracking_uri: str,
        run_id: str) -> dict[str, Any]:
    """Supervised fine-tuning of the base LM on prompt/completion pairs."""
    return steps.sft_step(Path(workdir), params, data_version, tracking_uri, run_id)


@task(name="evaluate", task_run_name="evaluate", cache_policy=NO_CACHE)
def evaluate(workdir: str, params: Params, data_version: str) -> dict[str, Any]:
    """Perplexity of the base; accuracy/macro-F1 of the task model vs the majority baseline."""
    return steps.evaluate_step(Path(workdir), params, data_version)


@task(name="close-mlflow-runs", task_run_name="close-mlflow-runs", cache_policy=NO_CACHE)
def close_mlflow_runs(tracking_uri: str, run_ids: list[str], status: str = "FAILED") -> None:
    """Mark the runs a failed pipeline opened as FAILED (no model version was registered)."""
    for run_id in run_ids:
        registry.finish_run(tracking_uri, run_id, status)


@task(name="register", task_run_name="register", retries=1, retry_delay_seconds=5,
      cache_policy=NO_CACHE)
def register(workdir: str, params: Params, data_version: str, tracking_uri: str,
             evaluation: dict[str, Any], flow_run_id: str | None, base_run_id: str,
             task_run_id: str, sft_run_id: str | None = None) -> dict[str, Any]:
    """Register the models in MLflow and apply the promotion gate."""
    return steps.register_step(Path(workdir), params, data_version, tracking_uri, evaluation,
                               flow_run_id, base_run_id, task_run_id, sft_run_id)
