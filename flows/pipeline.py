"""The training pipeline flow: data (DVC) → pretrain → fine-tune → evaluate → register (MLflow).

The flow only wires tasks; its typed parameters become the form behind the Prefect UI's Run
button.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run

from flows import tasks
from gpt.registry import resolve_tracking_uri
from gpt.report import summary_markdown
from gpt.workspace import STAGES


def _overrides(max_steps: int | None, learning_rate: float | None, data_source: str | None,
               extra: list[str] | None) -> list[str]:
    out = list(extra or [])
    if max_steps is not None:
        out.append(f"train.max_steps={max_steps}")
    if learning_rate is not None:
        out.append(f"train.lr={learning_rate}")
    if data_source:
        out.append(f"data.source={data_source}")
    return out


def _link_model_versions(mlflow_ui: str, registered: dict[str, Any]) -> None:
    """A link artifact per registered model version, to its page in the MLflow UI."""
    for kind, reg in registered.items():
        name, version = reg.get("name"), reg.get("version")
        if not name or not version:
            continue
        create_link_artifact(f"{mlflow_ui.rstrip('/')}/#/models/{name}/versions/{version}",
                             link_text=f"MLflow: {name} version {version}",
                             key=f"mlflow-{kind}-model",
                             description=f"the {kind} model version this run registered "
                                         "(or reused) in the MLflow registry")


@flow(name="training_pipeline", log_prints=True)
def training_pipeline(profile: str = "tiny", max_steps: int | None = None,
                      learning_rate: float | None = None, data_source: str | None = None,
                      reclean: bool = False, overrides: list[str] | None = None,
                      workdir: str = ".") -> dict[str, Any]:
    """Train, evaluate and register GPT models end to end.

    Args:
        profile: params.yaml profile: `tiny` (CPU demo) or `gpt2-124m` (GPU).
        max_steps: pretraining steps (default: the profile's train.max_steps).
        learning_rate: peak pretraining learning rate (default: the profile's train.lr).
        data_source: `builtin` or a glob of local files (default: params.yaml's data.source).
        reclean: re-run the cleaning stage even if DVC finds it unchanged.
        overrides: more `section.key=value` overrides, e.g. `finetune.max_steps=100`.
        workdir: the gptops workspace folder (params.yaml, dvc.yaml, data/).
    """
    logger = get_run_logger()
    t0 = time.perf_counter()
    params = tasks.prepare_workspace(workdir, profile,
                                     _overrides(max_steps, learning_rate, data_source, overrides))
    ws = os.path.abspath(workdir)
    stages = [tasks.data_stage(ws, stage, force=reclean and stage == "clean")
              for stage in STAGES]
    data_version = tasks.version_data(ws)
    uri = resolve_tracking_uri(params.registry.tracking_uri, ws)
    fr_id = str(flow_run.id) if flow_run.id else None
    opened: list[str] = []
    try:
        base_run = tasks.start_mlflow_run(uri, params, "base", data_version, fr_id)
        opened.append(base_run)
        pre = tasks.pretrain(ws, params, data_version, uri, base_run)
        task_run = tasks.start_mlflow_run(uri, params, "task", data_version, fr_id)
        opened.append(task_run)
        fin = tasks.finetune(ws, params, data_version, uri, task_run)
        sft_run = sft = None
        if params.sft.enabled:
            sft_run = tasks.start_mlflow_run(uri, params, "sft", data_version, fr_id)
            opened.append(sft_run)
            sft = tasks.sft(ws, params, data_version, uri, sft_run)
        evaluation = tasks.evaluate(ws, params, data_version)
        registered = tasks.register(ws, params, data_version, uri, evaluation, fr_id, base_run,
                                    task_run, sft_run)
    except BaseException:
        # The registry is untouched by a failed run; its MLflow runs say so instead of RUNNING.
        tasks.close_mlflow_runs(uri, opened)
        raise
    result = {"data_version": data_version, "stages": stages, "pretrain": pre, "finetune": fin,
              "sft": sft,
              "evaluation": evaluation, "registered": registered, "tracking_uri": uri,
              "mlflow_ui": os.environ.get("GPTOPS_MLFLOW_UI", ""),
              "seconds": time.perf_counter() - t0}
    reused = [s["stage"] for s in stages if not s["ran"]]
    if reused:
        logger.info("data stages reused from the DVC cache (inputs unchanged): %s",
                    ", ".join(reused))
    create_markdown_artifact(summary_markdown(result), key="pipeline-summary",
                             description="metrics, data version and promotion decisions")
    if result["mlflow_ui"]:
        _link_model_versions(result["mlflow_ui"], registered)
    return result
