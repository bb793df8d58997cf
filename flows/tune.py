"""The ``tune`` flow: an Optuna study of pretraining trials (:mod:`gpt.tune`), as a Prefect run.

Wiring only: the workspace lock, the MLflow parent run of the study, and one task that runs
(or resumes) the study and registers the best trial's model through the gate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows import events, tasks
from flows.pipeline import _gpt_logs_to_prefect
from gpt.config import DEFAULT_PROFILE
from gpt.dvc_repo import data_version
from gpt.pipeline.context import RunContext
from gpt.registry import cli_run_name, pipeline_run
from gpt.registry.tracking import workspace_id
from gpt.workspace_lock import workspace_lock


@flow(name="tune", log_prints=True, on_failure=[events.run_failed],
      on_crashed=[events.run_failed])
def tune(profile: str = DEFAULT_PROFILE, overrides: list[str] | None = None,
         study: str = "", workdir: str = ".") -> dict[str, Any]:
    """Search tune.space of params.yaml with an Optuna study (TPE, median pruner).

    Args:
        profile: params.yaml profile the trials start from.
        overrides: `section.key=value` overrides, e.g. `tune.trials=20`.
        study: study name; empty = derived from the data, the tune section and the params.
        workdir: the gptops workspace folder (its data stages have run).
    """
    from gpt.tune import load_params

    _gpt_logs_to_prefect()
    with workspace_lock(workdir, f"flow run '{flow_run.name}'"):
        ctx = RunContext.of(workdir, load_params(workdir, profile, overrides),
                            data_version=data_version(workdir))
        fr_id = str(flow_run.id) if flow_run.id else None
        with pipeline_run(ctx.tracked(fr_id), flow_run.name or cli_run_name("tune"),
                          workspace_id(ctx.workdir)) as tracking:
            result = tasks.tune_study(replace(ctx, tracking=tracking), study)
    events.emit_decisions({"base": result.get("registered") or {}})
    return result
