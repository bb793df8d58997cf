"""The training pipeline flow: data (DVC) → pretrain → fine-tune → evaluate → register (MLflow).

The flow only wires tasks; its typed parameters become the form behind the Prefect UI's Run
button.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import asdict
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled

from flows import tasks
from flows.report import summary_markdown
from gpt import stopping
from gpt.config import DEFAULT_PROFILE, PROJECT_PARAMS, get_dotted, load_params, profile_names
from gpt.errors import ConfigError, Interrupted
from gpt.pipeline.base import parse as parse_base
from gpt.pipeline.steps import lineage
from gpt.preflight import check_workdir
from gpt.registry import Tracking, cli_run_name, pipeline_run, resolve_tracking_uri
from gpt.registry.tracking import describe_pipeline_run, workspace_id
from gpt.workspace import STAGES, live_run, run_alive, sweep_live_runs, workspace_lock

#: Form field -> (params key, and the key that selects a file task when the field is set).
FORM_FIELDS = {
    "max_steps": ("train.max_steps", None), "learning_rate": ("train.lr", None),
    "finetune_steps": ("finetune.max_steps", None), "sft_steps": ("sft.max_steps", None),
    "lora_rank": ("finetune.lora_rank", None),
    "task_file": ("finetune.task_path", "finetune.task=file"),
    "sft_file": ("sft.task_path", "sft.task=file"), "data_source": ("data.source", None),
    "base_model": ("registry.base_model", None), "task_model": ("registry.task_model", None),
    "sft_model": ("registry.sft_model", None),
    "processes": ("launch.nproc_per_node", None), "strategy": ("launch.strategy", None),
    "benchmark_items": ("evaluate.benchmark_limit", None),
}


def form_defaults(path: str | os.PathLike = PROJECT_PARAMS) -> dict[str, Any]:
    """The values the Run form shows: the file's values under the default profile."""
    try:
        p = load_params(path, DEFAULT_PROFILE)
    except ConfigError:
        return {}
    return {"profile": DEFAULT_PROFILE,
            **{name: get_dotted(p, key) for name, (key, _) in FORM_FIELDS.items()}}


#: The values the Run form shows when no deployment sets its own: the project's params.yaml.
_DEFAULTS = form_defaults()
ProfileName = Literal[tuple(profile_names())]  # type: ignore[valid-type]


def form_overrides(workdir: str, fields: dict[str, Any], extra: list[str] | None) -> list[str]:
    """The overrides a Run form (or a call) asks for.

    A field left at its default means "the profile's own value": the default shown is the
    workspace's value under the default profile, so it is not an override. ``extra`` overrides
    come last and always apply.
    """
    shown = form_defaults(os.path.join(workdir, "params.yaml"))
    out: list[str] = []
    for name, value in fields.items():
        key, selects = FORM_FIELDS[name]
        if value in (_DEFAULTS.get(name), shown.get(name)):
            continue
        out.append(f"{key}={json.dumps(value)}")
        if selects and value:
            out.append(selects)
    return out + list(extra or [])


def _gpt_logs_to_prefect() -> None:
    """Send the library's ``gpt.*`` log lines to this run's Prefect log (and keep INFO)."""
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger("gpt")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        logger.addHandler(APILogHandler())


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


def _stops_cancel(fn: Any) -> Any:
    """SIGTERM/SIGINT stop the flow in one line naming the step (``gpt.stopping``); the flow run
    (and the task that ran) end Cancelled, where Prefect's own SIGTERM handler crashes them.

    Defined here, not in ``flows.tasks``: Prefect resolves the flow's annotations in the
    wrapper's module."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with stopping.on_signals("training_pipeline"):
                return fn(*args, **kwargs)
        except Interrupted as exc:
            return Cancelled(message=str(stopping.remember(exc)))

    return run


@flow(name="training_pipeline", log_prints=True)
@_stops_cancel
def training_pipeline(
    profile: ProfileName = _DEFAULTS["profile"],
    max_steps: int = _DEFAULTS["max_steps"],
    learning_rate: float = _DEFAULTS["learning_rate"],
    finetune_steps: int = _DEFAULTS["finetune_steps"],
    sft_steps: int = _DEFAULTS["sft_steps"],
    lora_rank: int = _DEFAULTS["lora_rank"],
    task_file: str = _DEFAULTS["task_file"],
    sft_file: str = _DEFAULTS["sft_file"],
    data_source: str = _DEFAULTS["data_source"],
    base_model: str = _DEFAULTS["base_model"],
    task_model: str = _DEFAULTS["task_model"],
    sft_model: str = _DEFAULTS["sft_model"],
    processes: str = str(_DEFAULTS["processes"]),
    strategy: Literal["ddp", "fsdp"] = _DEFAULTS["strategy"],
    benchmark_items: int = _DEFAULTS["benchmark_items"],
    base: str = "",
    reclean: bool = False,
    save_overrides: bool = False,
    wait: bool = True,
    overrides: list[str] | None = None,
    workdir: str = ".",
) -> dict[str, Any]:
    """Train, evaluate and register GPT models end to end.

    A field left at its default takes the profile's own value.

    Args:
        profile: params.yaml profile (tiny: CPU demo; gpt2-124m: GPT-2 from scratch, GPU;
            gpt2-continue: continue pretraining hf:gpt2).
        max_steps: pretraining optimizer steps.
        learning_rate: peak pretraining learning rate.
        finetune_steps: classification fine-tuning steps.
        sft_steps: supervised fine-tuning (SFT) steps.
        lora_rank: 0 = full fine-tuning; >0 = LoRA adapters of this rank.
        task_file: your own text,label file (.csv/.jsonl/.parquet) to fine-tune on; empty = the
            built-in package task.
        sft_file: your own prompt,completion file for SFT; empty = the built-in docsummary task.
        data_source: `builtin`, a glob of local files, or `hf:<dataset>`.
        base_model: registered model name of the pretrained base.
        task_model: registered model name of the classifier.
        sft_model: registered model name of the SFT model.
        processes: training processes on the worker (pretrain, fine-tune, SFT): `auto` = one
            per GPU (1 without), or a count; more than 1 are started by torch's launcher.
        strategy: `ddp` (a model per process) or `fsdp` (FSDP2 sharding, for large models).
        benchmark_items: items per benchmark task in the evaluation (the built-in suite and
            `evaluate.benchmarks`); 0 = all. Fewer = a faster evaluation, noisier scores.
        base: fine-tune a registered base instead of pretraining, e.g.
            `models:/gptops-base@champion` or `models:/gptops-base/3`; empty = pretrain.
        reclean: re-run the cleaning stage even if DVC finds it unchanged.
        save_overrides: keep this run's data overrides in params.yaml (default: this run only).
        wait: when another run holds the workspace, wait for it (False: fail at once, naming it).
        overrides: more `section.key=value` overrides, e.g. `finetune.lr=0.0005`.
        workdir: the gptops workspace folder (params.yaml, dvc.yaml, data/).
    """
    _gpt_logs_to_prefect()
    logger = get_run_logger()
    t0 = time.perf_counter()
    fields = {"max_steps": max_steps, "learning_rate": learning_rate,
              "finetune_steps": finetune_steps, "sft_steps": sft_steps, "lora_rank": lora_rank,
              "task_file": task_file, "sft_file": sft_file, "data_source": data_source,
              "base_model": base_model, "task_model": task_model, "sft_model": sft_model,
              "processes": int(processes) if processes.strip().isdigit() else processes,
              "strategy": strategy, "benchmark_items": benchmark_items}
    parse_base(base)  # a malformed --base fails before any work
    check_workdir(workdir)  # nothing (not even the lock file) is written into a refused folder
    ws = os.path.abspath(workdir)
    fr_id = str(flow_run.id) if flow_run.id else None
    # The run's inputs (a Run form's or `prefect deployment run`'s overrides too) are checked
    # before it queues for the workspace: a typo fails now, not after the run it waits for.
    all_overrides = form_overrides(workdir, fields, overrides)
    params_file = os.path.join(ws, "params.yaml")
    load_params(params_file if os.path.isfile(params_file) else PROJECT_PARAMS, profile,
                all_overrides)
    # One pipeline per workspace at a time: the workspace's flock (CLI runs, both deployments,
    # `gptops pretrain`...), freed by the kernel when its holder dies. No Prefect concurrency
    # limit besides: its lease lives in the memory of the server that granted it, so a run or
    # server that dies leaks its slot for good (issue 23). The live-run record tells the next
    # holder that this run, waiting or not, is alive (never to be marked Crashed).
    with live_run(ws, fr_id or f"pid-{os.getpid()}", f"flow run '{flow_run.name}'"), \
            workspace_lock(ws, f"flow run '{flow_run.name}'", wait=wait):
        stale = crash_stale_flow_runs(ws, fr_id)
        if stale:
            logger.warning("marked %d flow run(s) of this workspace left RUNNING by a killed "
                           "process as Crashed: %s", len(stale), ", ".join(stale))
        params = tasks.prepare_workspace(workdir, profile, all_overrides, save_overrides)
        try:
            return _run(params, workdir, reclean, logger, t0, base)
        finally:
            tasks.restore_params(ws)


#: A RUNNING flow run with no live-run record is taken for dead only this long after it started
#: (a run writes its record first thing; a waiting run is never within reach of this).
NO_RECORD_GRACE_S = 120.0


def crash_stale_flow_runs(ws: str, current: str | None) -> list[str]:
    """Flow runs of this workspace still RUNNING whose process is provably dead: set to Crashed
    (and their RUNNING task runs); their names are returned.

    Dead means its live-run record (:func:`gpt.workspace.live_run`) is no longer locked (its
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
    names = []
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        for fr in client.read_flow_runs(flow_run_filter=FlowRunFilter(state=running)):
            here = os.path.abspath(str(fr.parameters.get("workdir", "."))) == ws
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


def _run(params: Any, workdir: str, reclean: bool, logger: Any, t0: float,
         base: str = "") -> dict[str, Any]:
    ws = os.path.abspath(workdir)
    stages = [tasks.data_stage(ws, stage, force=reclean and stage == "clean")
              for stage in STAGES]
    tasks.check_tasks(ws, params)  # too few documents for a built-in task: before any training
    data_version = tasks.version_data(ws)
    reused = [s["stage"] for s in stages if not s["ran"]]
    if reused:
        logger.info("data stages reused from the DVC cache (inputs unchanged): %s",
                    ", ".join(reused))
    fr_id = str(flow_run.id) if flow_run.id else None
    tracking = Tracking(resolve_tracking_uri(params.registry.tracking_uri, ws),
                        params.registry.experiment, tags=lineage(params, data_version, fr_id))
    # One MLflow parent run per flow run; each training step nests its own run under it.
    with pipeline_run(tracking, flow_run.name or cli_run_name("run"),
                      workspace_id(ws)) as tracking:
        if base:  # an alias read once: a promotion mid-run cannot change the base
            base = tasks.pin_base(ws, params, data_version, base)
        trained = {} if base else {"pretrain": tasks.pretrain(ws, params, data_version,
                                                              tracking)}
        trained["finetune"] = tasks.finetune(ws, params, data_version, tracking, base)
        if params.sft.enabled:
            trained["sft"] = tasks.sft(ws, params, data_version, tracking, base)
        evaluation = tasks.evaluate(ws, params, data_version, base)
        registered = tasks.register(ws, params, data_version, tracking, evaluation, base)
    result = {"data_version": data_version, "stages": stages,
              **{step: asdict(r) for step, r in trained.items()},
              "evaluation": {k: asdict(e) for k, e in evaluation.items()},
              "registered": {k: asdict(r) for k, r in registered.items()},
              "tracking_uri": tracking.uri, "mlflow_run_id": tracking.parent_run_id,
              "mlflow_ui": os.environ.get("GPTOPS_MLFLOW_UI", ""),
              "seconds": time.perf_counter() - t0, "flow_run_id": fr_id}
    summary = summary_markdown(result)
    create_markdown_artifact(summary, key="pipeline-summary",
                             description="metrics, data version and promotion decisions")
    if tracking.parent_run_id:  # the runs table compares pipeline runs by these
        describe_pipeline_run(tracking.uri, tracking.parent_run_id, summary,
                              result["evaluation"], result["registered"])
    if result["mlflow_ui"]:
        _link_model_versions(result["mlflow_ui"], result["registered"])
    return result
