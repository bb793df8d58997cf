"""The training pipeline flow: data (DVC) → pretrain → fine-tune → evaluate → register (MLflow).

The flow only wires tasks; its typed parameters become the form behind the Prefect UI's Run
button (:mod:`flows.form`). ``training_pipeline`` is built on first use, not when this module is
imported: the form's defaults and profile choices are the project's params.yaml, read then.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import time
from dataclasses import asdict, replace
from typing import Any, Literal

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows import artifacts, events, form, links, tasks
from flows.form import FLOW_NAME
from flows.report import summary_markdown
from gpt import stopping, warmup
from gpt.config import DEFAULT_PROFILE, PROJECT_PARAMS, load_params, profile_names
from gpt.data.watch import unread_change
from gpt.dvc_repo import STAGES
from gpt.errors import Interrupted
from gpt.pipeline.context import RunContext, prepare_run
from gpt.registry import cli_run_name, pipeline_run
from gpt.registry import tags as tag
from gpt.registry.tracking import (
    describe_pipeline_run,
    experiment_id,
    store_opened_meanwhile,
    workspace_id,
)
from gpt.workspace_lock import live_run, run_alive, sweep_live_runs, workspace_lock


def _gpt_logs_to_prefect() -> None:
    """Send the library's ``gpt.*`` log lines to this run's Prefect log (and keep INFO)."""
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger("gpt")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        logger.addHandler(APILogHandler())


def _stops_cancel(fn: Any) -> Any:
    """SIGTERM/SIGINT stop the flow in one line naming the step (``gpt.stopping``); the flow run
    (and the task that ran) end Cancelled, where Prefect's own SIGTERM handler crashes them.

    Defined here, not in ``flows.tasks``: Prefect resolves the flow's annotations in the
    wrapper's module."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with stopping.on_signals(FLOW_NAME):
                return fn(*args, **kwargs)
        except Interrupted as exc:
            return Cancelled(message=str(stopping.remember(exc)))

    return run


def _training_pipeline(*, profile: str = DEFAULT_PROFILE, base: str = "", reclean: bool = False,
                       reingest: bool = False, save_overrides: bool = False, wait: bool = True,
                       overrides: list[str] | None = None, workdir: str = ".",
                       trigger: str = "", **fields: Any) -> dict[str, Any]:
    """Train, evaluate and register GPT models end to end.

    A field left at its default takes the profile's own value.

    Args:
        profile: params.yaml profile (tiny: CPU demo; gpt2-124m: GPT-2 from scratch, GPU;
            gpt2-continue: continue pretraining hf:gpt2).
        base: fine-tune a registered base instead of pretraining, e.g.
            `models:/gptops-base@champion` or `models:/gptops-base/3`; empty = pretrain.
        reclean: re-run the cleaning stage even if DVC finds it unchanged.
        reingest: re-read data.source even if DVC finds ingest unchanged (new or changed local
            files; DVC does not track them). retrain-on-data sets it.
        save_overrides: keep this run's data overrides in params.yaml (default: this run only).
        wait: when another run holds the workspace, wait for it (False: fail at once, naming it).
        overrides: more `section.key=value` overrides, e.g. `finetune.lr=0.0005`.
        workdir: the gptops workspace folder (params.yaml, dvc.yaml, data/).
        trigger: why this run started, when an event started it (retrain-on-data: the files
            that changed); it prefixes the run's name and tags its MLflow runs.
    """
    _gpt_logs_to_prefect()
    if trigger:
        _name_after(trigger)
    t0 = time.perf_counter()
    asked = form.overrides(fields, _project_form(), lambda: form.workspace_defaults(workdir))
    # Every input (a Run form's or `prefect deployment run`'s overrides too) is checked before
    # the run queues for the workspace: a typo fails now, not after the run it waits for.
    ctx = prepare_run(workdir, profile, asked + list(overrides or []), base)
    ws, fr_id = str(ctx.workdir), str(flow_run.id) if flow_run.id else None
    who = f"flow run '{flow_run.name}'"
    # One pipeline per workspace at a time: the workspace's flock (CLI runs, both deployments,
    # `gptops pretrain`...), freed by the kernel when its holder dies. No Prefect concurrency
    # limit besides: its lease lives in the memory of the server that granted it, so a run or
    # server that dies leaks its slot for good (issue 23). The live-run record tells the next
    # holder that this run, waiting or not, is alive (never to be marked Crashed).
    with live_run(ws, fr_id or f"pid-{os.getpid()}", who), \
            workspace_lock(ws, who, wait=wait):
        stale = crash_stale_flow_runs(ws, fr_id)
        if stale:
            get_run_logger().warning("marked %d flow run(s) of this workspace left RUNNING by a "
                                     "killed process as Crashed: %s", len(stale),
                                     ", ".join(stale))
        ctx = tasks.prepare_workspace(ctx, save_overrides)
        try:
            with artifacts.training_progress():
                result = _run(ctx, reclean, fr_id, reingest, trigger)
        finally:
            tasks.restore_params(ws)
    return _report({**result, "seconds": time.perf_counter() - t0})


@functools.cache
def _project_form() -> dict[str, Any]:
    """What the form shows when no deployment sets its own values: the project's params.yaml
    under the default profile."""
    return form.shown(load_params(PROJECT_PARAMS, DEFAULT_PROFILE))


def _build() -> Flow:
    """``training_pipeline``: the function above with the form's fields as typed parameters
    (:mod:`flows.form`) and the profiles of params.yaml as the profile's choices."""
    own = inspect.signature(_training_pipeline).parameters
    profile = own["profile"].replace(annotation=Literal[tuple(profile_names())])
    rest = [p for name, p in own.items() if name not in ("profile", "fields")]
    run = _stops_cancel(_training_pipeline)
    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [profile, *form.parameters(_project_form()), *rest],
        return_annotation=dict[str, Any])
    run.__name__ = run.__qualname__ = FLOW_NAME
    # A failed or crashed run is an event (gptops.run.failed) that notifications listen to.
    return flow(name=FLOW_NAME, log_prints=True, on_failure=[events.run_failed],
                on_crashed=[events.run_failed])(run)


def _name_after(trigger: str) -> None:
    """Rename this flow run after why it started (``data-changed-<its name>``), in Prefect and
    for the MLflow parent run named after it."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    prefix = "-".join(trigger.split(":", 1)[0].lower().split())
    if ctx.flow_run.name.startswith(f"{prefix}-"):
        return
    name = f"{prefix}-{ctx.flow_run.name}"
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, name=name)
    ctx.flow_run.name = name


def __getattr__(name: str) -> Any:
    if name == FLOW_NAME:
        built = globals()[name] = _build()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: A RUNNING flow run with no live-run record is taken for dead only this long after it started
#: (a run writes its record first thing; a waiting run is never within reach of this).
NO_RECORD_GRACE_S = 120.0


def crash_stale_flow_runs(ws: str, current: str | None) -> list[str]:
    """Flow runs of this workspace still RUNNING whose process is provably dead: set to Crashed
    (and their RUNNING task runs); their names are returned.

    Dead means its live-run record (:func:`gpt.workspace_lock.live_run`) is no longer locked (its
    process was killed, or ended while the server could not record it), or it
    has none and started over ``NO_RECORD_GRACE_S`` ago (a run of an older gptops). A run
    waiting for the workspace holds its record and is left alone.
    """
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    running = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    ws = os.path.realpath(ws)
    names = []
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        for fr in client.read_flow_runs(flow_run_filter=FlowRunFilter(state=running)):
            here = os.path.realpath(str(fr.parameters.get("workdir", "."))) == ws
            if str(fr.id) == current or fr.flow_id is None or not here:
                continue
            alive = run_alive(ws, str(fr.id))
            started = fr.start_time or fr.expected_start_time
            if alive or (alive is None and started is not None
                         and (now - started).total_seconds() < NO_RECORD_GRACE_S):
                continue
            message = "found RUNNING by the next run of this workspace: its process was killed"
            for tr in client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id={"any_": [fr.id]}),
                    task_run_filter=TaskRunFilter(state=TaskRunFilterState(
                        type=TaskRunFilterStateType(any_=[StateType.RUNNING])))):
                client.set_task_run_state(tr.id, Crashed(message=message), force=True)
            client.set_flow_run_state(fr.id, Crashed(message=message), force=True)
            names.append(fr.name)
    sweep_live_runs(ws)  # the records of every ended run (Crashed ones just above included)
    return names


def _run(ctx: RunContext, reclean: bool, flow_run_id: str | None, reingest: bool = False,
         trigger: str = "") -> dict[str, Any]:
    """The data stages, then each model trained, evaluated and registered (holding the
    workspace)."""
    ws = str(ctx.workdir)
    forced = {"ingest": reingest, "clean": reclean}
    stages = []
    with store_opened_meanwhile(ctx.tracking_uri, ctx.params.registry.experiment):
        warmup.mark()  # is a core idle while the stages run (and the warm-up may use it)?
        for stage in STAGES:
            stages.append(tasks.data_stage(ws, stage, force=forced.get(stage, False)))
            if stages[-1]["ran"]:  # new data: the models train again (their imports, now)
                warmup.training_imports_soon()
    tasks.check_tasks(ctx)  # too few documents for a built-in task: before any training
    ctx = replace(ctx, data_version=tasks.version_data(ws))
    reused = [s["stage"] for s in stages if not s["ran"]]
    if reused:
        get_run_logger().info("data stages reused from the DVC cache (inputs unchanged): %s",
                              ", ".join(reused))
    unread = unread_change(ctx.workdir, ctx.params.data) if "ingest" in reused else None
    if unread is not None:  # DVC does not track a local source's files
        get_run_logger().warning("data.source changed since the last ingest (%s); "
                                 "--reingest reads it", unread.summary)
    # One MLflow parent run per flow run; each training step nests its own run under it. Each
    # run and version links to this flow run's page when a Prefect UI serves it.
    flow_run_url = links.flow_run_page(flow_run_id)
    tracked = ctx.tracked(flow_run_id, flow_run_url)
    if trigger:  # why the run started, on the parent run and every step's run
        tracked = replace(tracked, tags={**tracked.tags, tag.TRIGGER: trigger[:tag.VALUE_CAP]})
    with pipeline_run(tracked, flow_run.name or cli_run_name("run"),
                      workspace_id(ws)) as tracking:
        ctx = tasks.pin_base(replace(ctx, tracking=tracking))  # an alias read once
        trained = {} if ctx.base_spec else {"pretrain": tasks.pretrain(ctx)}
        trained["finetune"] = tasks.finetune(ctx)
        if ctx.params.sft.enabled:
            trained["sft"] = tasks.sft(ctx)
        evaluation = tasks.evaluate(ctx)
        registered = tasks.register(ctx, evaluation)
    events.emit_decisions({k: asdict(r) for k, r in registered.items()})
    return {"data_version": ctx.data_version, "stages": stages,
            **{step: asdict(r) for step, r in trained.items()},
            "evaluation": {k: asdict(e) for k, e in evaluation.items()},
            "registered": {k: asdict(r) for k, r in registered.items()},
            "tracking_uri": tracking.uri, "mlflow_run_id": tracking.parent_run_id,
            "mlflow_experiment_id": experiment_id(tracking.uri, tracking.experiment),
            "flow_run_id": flow_run_id, "prefect_flow_run_url": flow_run_url}


def _report(result: dict[str, Any]) -> dict[str, Any]:
    """The run's summary as a Prefect artifact and on its MLflow parent run, a table per
    evaluated model, and links to the MLflow pages when an MLflow UI serves them."""
    result["mlflow_pages"] = links.mlflow_pages(
        links.mlflow_ui(), result["mlflow_experiment_id"], result["mlflow_run_id"],
        result["registered"])
    summary = summary_markdown(result)
    create_markdown_artifact(summary, key="pipeline-summary",
                             description="metrics, data version and promotion decisions")
    if result["mlflow_run_id"]:  # the runs table compares pipeline runs by these
        describe_pipeline_run(result["tracking_uri"], result["mlflow_run_id"], summary,
                              result["evaluation"], result["registered"])
    artifacts.evaluation_tables(result["evaluation"], result["registered"])
    artifacts.link_artifacts(result["mlflow_pages"], result["registered"])
    return result
