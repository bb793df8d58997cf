"""``gptops`` library commands (no Prefect here; ``flows.cli`` adds ``run`` and ``serve``).

Every command is a thin entry point over ``gpt.*`` functions. Errors caused by input print one
line naming the input and the fix, and exit with status 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from gpt.defaults import DEFAULT_PROFILE
from gpt.errors import ERROR_FILE_ENV, GptopsError, Interrupted, RankFailed
from gpt.kinds import BASE, TASK
from gpt.layout import Workspace

app = typer.Typer(help="Train GPT models end to end: data → pretrain → fine-tune → evaluate → "
                       "register (MLflow), orchestrated by Prefect.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="DVC data stages (what `dvc repro` runs).", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
log = logging.getLogger(__name__)

#: Set before anything is imported: no telemetry from any component, no download bars.
QUIET_ENV = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
             "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
             "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TOKENIZERS_PARALLELISM": "false",
             # MLflow's own handler prints its INFO/WARNING lines ("'models:/...' resolved as",
             # "params provided to the predict method will override ..."): errors only.
             "MLFLOW_LOGGING_LEVEL": "ERROR"}
#: Third-party loggers whose INFO lines repeat ours or say nothing to a user.
NOISY_LOGGERS = ("httpx", "httpcore", "alembic", "urllib3", "matplotlib", "asyncio",
                 "mlflow.store.db.utils", "mlflow.tracking._tracking_service.client",
                 "sqlalchemy", "filelock", "prefect.server", "uvicorn", "docket",
                 "absl")  # rouge-score's "Using default tokenizer."


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gptops")
    except PackageNotFoundError:
        return "unknown"


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"gptops {_version()}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                                is_eager=True, help="print the version and "
                                                "exit")] = False) -> None:
    """Train GPT models end to end: data → pretrain → fine-tune → evaluate → register (MLflow),
    orchestrated by Prefect."""


class TerminalHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, so a live progress bar (which swaps
    it) prints log lines above itself instead of through itself."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


#: A message that starts with its step's name: ``clean: 3 of 4 shards done``.
_NAMED = re.compile(r"^[a-z][\w.-]*: ")


class _Formatter(logging.Formatter):
    """``12:00:01 INFO pretrain: message``: the Prefect task (or flow) a line belongs to,
    else the logger's name. A user error's traceback is left out: its message says it all."""

    def format(self, record: logging.LogRecord) -> str:
        where = (getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None)
                 or _current_task_run() or record.name)
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, GptopsError):
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None,
                                            "exc_text": None})
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        message = record.getMessage()
        if where == record.name:  # outside a Prefect task: one scheme, "<step>: message"
            if _NAMED.match(message):  # progress and stage lines name their step already
                where = message.split(":", 1)[0]
            elif where.startswith("gpt."):
                where = where.rsplit(".", 1)[-1]  # gpt.prefect -> prefect
        if message.startswith(f"{where}:"):
            line = f"{stamp} {record.levelname} {message}"
        else:
            line = f"{stamp} {record.levelname} {where}: {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _current_task_run() -> str | None:
    """The Prefect task run this thread is in, if Prefect is loaded at all (never imported)."""
    context = sys.modules.get("prefect.context")
    ctx = context.TaskRunContext.get() if context is not None else None
    return ctx.task_run.name if ctx is not None else None


def _for_the_terminal(record: logging.LogRecord) -> bool:
    """Not a line a live bar shows, nor Prefect's "Finished in state Cancelled(...)" after a
    deliberate stop (SIGTERM/SIGINT), which the command's one line says already."""
    if getattr(record, "gptops_bar", False):
        return False
    from gpt import stopping

    return not (record.name.startswith("prefect") and stopping.stopped() is not None
                and "Cancelled(" in record.getMessage())


def setup_logging(verbose: bool = False) -> None:
    """One terminal handler for every logger (ours, Prefect's, DVC's), once."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(isinstance(h, TerminalHandler) for h in root.handlers):
        handler = TerminalHandler()
        handler.setFormatter(_Formatter())
        handler.addFilter(_for_the_terminal)
        root.addHandler(handler)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)

Workdir = Annotated[Path, typer.Option("--workdir", "-w", help="gptops workspace (holds "
                                       "params.yaml and dvc.yaml)")]
Profile = Annotated[str, typer.Option("--profile", "-p", help="profile in params.yaml: tiny "
                                      "(CPU demo) or gpt2-124m (GPU)")]
Overrides = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a "
                                                     "parameter, e.g. --set train.max_steps=50")]


def _params(workdir: Path, profile: str = DEFAULT_PROFILE, overrides: list[str] | None = None):
    from gpt.config import load_params

    return load_params(Workspace(Path(workdir)).params_yaml, profile, overrides)


def _tracking_uri(workdir: Path, params=None, given: str = "", check: bool = True) -> str:
    """``--tracking-uri``, else ``registry.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else
    the workspace's SQLite; checked in seconds (one line, exit 2) unless ``check`` is False."""
    from gpt.preflight import check_tracking_uri
    from gpt.registry import resolve_tracking_uri

    if not given and params is None:
        params = _params(workdir)
    uri = given or resolve_tracking_uri(params.registry.tracking_uri, workdir)
    if check:
        check_tracking_uri(uri)
    return uri


NoWait = Annotated[bool, typer.Option("--no-wait", help="fail at once when another command "
                                      "holds the workspace (default: wait for it)")]


@contextlib.contextmanager
def _data_command(workdir: Path, stage: str, no_wait: bool):
    """A data stage writes the workspace: it holds the workspace's lock (unless the run that
    started it through DVC holds it), and SIGTERM/SIGINT stop it in one line."""
    from gpt import stopping
    from gpt.workspace_lock import workspace_lock

    setup_logging()
    with stopping.on_signals(f"data {stage}"), \
            workspace_lock(workdir, f"gptops data {stage}", wait=not no_wait):
        yield


@data_app.command("ingest")
def data_ingest(workdir: Workdir = Path("."), no_wait: NoWait = False) -> None:
    """Stream the configured source (default: the built-in corpus) into data/raw shards (bad
    records into data/raw/rejected.parquet). A killed run resumes where it stopped."""
    from gpt.data import stages

    with _data_command(workdir, "ingest", no_wait):
        stages.ingest(_params(workdir), workdir)


@data_app.command("clean")
def data_clean(workdir: Workdir = Path("."),
               workers: Annotated[int, typer.Option(
                   "--workers", min=0, help="processes for the per-shard work (0 = every core, "
                   "or GPTOPS_DATA_WORKERS); the output is the same whatever the number")] = 0,
               no_wait: NoWait = False) -> None:
    """Clean data/raw into data/clean shard by shard (every document kept or rejected with a
    reason; duplicates found across all shards). A killed run resumes where it stopped."""
    from gpt.data import stages

    with _data_command(workdir, "clean", no_wait):
        stages.clean(_params(workdir), workdir, workers=workers or None)


@data_app.command("tokenize")
def data_tokenize(workdir: Workdir = Path("."), no_wait: NoWait = False) -> None:
    """Train the BPE tokenizer (on a bounded sample) and write train/val token shards to
    data/tokens, one pair per clean shard. A killed run resumes where it stopped."""
    from gpt.data import stages

    with _data_command(workdir, "tokenize", no_wait):
        stages.tokenize(_params(workdir), workdir)


JsonFlag = Annotated[bool, typer.Option("--json", help="print the result as JSON")]


def _step(name: str, workdir: Path, profile: str, overrides: list[str] | None,
          as_json: bool, base: str = "") -> None:
    """Run one step of ``gpt.pipeline.steps`` on the workspace's current data version."""

    from gpt import stopping
    from gpt.preflight import check_benchmarks, check_tasks
    from gpt.workspace_lock import workspace_lock

    setup_logging()
    params = _params(workdir, profile, overrides)
    if name != "pretrain":  # evaluate reads both tasks
        check_tasks(params, (name,) if name in ("finetune", "sft") else ("finetune", "sft"))
    if name in ("evaluate", "sft"):
        check_benchmarks(params)
    # One writer per workspace: a pipeline run or another training step waits (nodes > 0 of a
    # multi-node world share node 0's workspace, and only lend their processes).
    lock = (contextlib.nullcontext() if params.launch.node_rank else
            workspace_lock(workdir, f"gptops {name}"))
    with stopping.on_signals(name), lock:
        _step_locked(name, workdir, params, as_json, base)


def _step_locked(name: str, workdir: Path, params, as_json: bool, base: str) -> None:
    from dataclasses import asdict, replace

    from gpt import registry
    from gpt.dvc_repo import data_version
    from gpt.pipeline import steps
    from gpt.pipeline.context import RunContext
    from gpt.preflight import check_tracking_uri

    ctx = RunContext.of(workdir, params, base, data_version(workdir))
    out: dict
    if name == "evaluate":
        out = {k: asdict(e) for k, e in steps.evaluate_step(ctx).items()}
    else:
        check_tracking_uri(ctx.tracking_uri)
        # On the other nodes of a multi-node world, node 0 records the step: no MLflow run here.
        with (contextlib.nullcontext(None) if params.launch.node_rank else
              registry.pipeline_run(ctx.tracked(), registry.cli_run_name(name),
                                    registry.tracking.workspace_id(workdir))) as tracking:
            run = {"pretrain": steps.pretrain_step, "finetune": steps.finetune_step,
                   "sft": steps.sft_step}[name]
            out = asdict(run(replace(ctx, tracking=tracking)))
    if as_json:
        console.print_json(json.dumps(out, default=str))
    elif name == "evaluate":
        _print_evaluation(out)
    else:
        state = f"reused (key {out['key'][:8]})" if out["reused"] else "done"
        rows = {k: v for k, v in out.items() if k not in ("info", "step", "reused")}
        _print_rows(f"{name} {state}", [(k, _fmt(v)) for k, v in
                                        {**rows, **out["info"]}.items()])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _print_evaluation(out: dict) -> None:
    """Each model's metrics next to its baseline, one table."""
    table = Table(title="evaluation", title_justify="left")
    for col in ("model", "metric", "value", "baseline"):
        table.add_column(col, no_wrap=True)
    for kind, evaluation in out.items():
        metrics = evaluation["metrics"]
        for metric, value in metrics.items():
            per_class = metric.startswith(("precision_", "recall_", "f1_"))
            if per_class or metric.startswith("baseline_") or not isinstance(value, (int, float)):
                continue
            base = metrics.get(f"baseline_{metric}")
            table.add_row(kind, metric, f"{value:.4g}", "" if base is None else f"{base:.4g}")
    console.print(table)
    console.print("[dim]per-class metrics, samples and more: gptops evaluate --json[/dim]")


@app.command()
def pretrain(workdir: Workdir = Path("."), profile: Profile = DEFAULT_PROFILE,
             overrides: Overrides = None, as_json: JsonFlag = False) -> None:
    """Pretrain the base model on data/tokens (resumes from the newest valid checkpoint)."""
    _step("pretrain", workdir, profile, overrides, as_json)


@app.command()
def tune(workdir: Workdir = Path("."), profile: Profile = DEFAULT_PROFILE,
         overrides: Overrides = None,
         study: Annotated[str, typer.Option(
             "--study", help="study name (default: tune-<hash of the data, the tune section and "
             "the model/train values>); another name starts another study")] = "",
         as_json: JsonFlag = False) -> None:
    """Search tune.space (params.yaml) with an Optuna study of pretraining trials (TPE, median
    pruner), then register the best trial's model through the gate. A killed study resumes."""
    from dataclasses import asdict, replace

    from gpt import registry
    from gpt import tune as tuning
    from gpt.dvc_repo import data_version
    from gpt.pipeline.context import RunContext
    from gpt.preflight import check_tracking_uri
    from gpt.workspace_lock import workspace_lock

    setup_logging()
    # A bad tune.space (unknown key, refused value): one line, before any work.
    params = tuning.load_params(workdir, profile, overrides)
    with workspace_lock(workdir, "gptops tune"):
        ctx = RunContext.of(workdir, params, data_version=data_version(workdir))
        check_tracking_uri(ctx.tracking_uri)
        with registry.pipeline_run(ctx.tracked(), registry.cli_run_name("tune"),
                                   registry.tracking.workspace_id(workdir)) as tracking:
            result = tuning.run_study(replace(ctx, tracking=tracking), study)
    out = asdict(result)
    if as_json:
        console.print_json(json.dumps(out, default=str))
        return
    console.print(f"study {result.study}: {result.trials} trials ({result.pruned} pruned), "
                  f"{result.trained} trained by this call, {result.seconds:.0f} s",
                  highlight=False, soft_wrap=True)
    table = Table()
    keys = sorted({k for r in result.rows for k in r if k.startswith("params.")})
    for col in ("trial", "state", result.objective, *[k.removeprefix("params.") for k in keys]):
        table.add_column(col, no_wrap=True)
    for r in result.rows:
        table.add_row(str(r["trial"]), r["state"], _fmt(r["value"]) if r["value"] is not None
                      else "", *[_fmt(r.get(k, "")) for k in keys])
    console.print(table)
    reg = result.registered
    if reg:
        console.print(f"best: trial {result.best_trial} ({result.objective} "
                      f"{result.best_value:.4g}) -> {reg['name']} v{reg['version']}: "
                      f"{reg['reason']}", highlight=False, soft_wrap=True)


BaseOpt = Annotated[str, typer.Option(
    "--base", help="start from a registered base instead of this workspace's pretraining: "
    "models:/<name>@<alias> or models:/<name>/<version>")]


@app.command()
def finetune(workdir: Workdir = Path("."), profile: Profile = DEFAULT_PROFILE,
             overrides: Overrides = None, base: BaseOpt = "",
             as_json: JsonFlag = False) -> None:
    """Fine-tune a base as a classifier (finetune.task: package or file)."""
    _step("finetune", workdir, profile, overrides, as_json, base)


@app.command()
def sft(workdir: Workdir = Path("."), profile: Profile = DEFAULT_PROFILE,
        overrides: Overrides = None, base: BaseOpt = "", as_json: JsonFlag = False) -> None:
    """Supervised fine-tuning of a base LM on prompt/completion pairs (sft.task)."""
    _step("sft", workdir, profile, overrides, as_json, base)


@app.command()
def evaluate(workdir: Workdir = Path("."), profile: Profile = DEFAULT_PROFILE,
             overrides: Overrides = None, base: BaseOpt = "",
             as_json: JsonFlag = False) -> None:
    """Evaluate base perplexity and task metrics next to their baselines."""
    _step("evaluate", workdir, profile, overrides, as_json, base)


@app.command("import")
def import_(spec: Annotated[str, typer.Argument(help="hf:<save_pretrained folder or hub id>")],
            workdir: Workdir = Path("."), profile: Profile = DEFAULT_PROFILE,
            overrides: Overrides = None, as_json: JsonFlag = False,
            init: Annotated[bool, typer.Option("--init", help="make a non-empty folder that is "
                                               "not a workspace into one")] = False) -> None:
    """Register a pretrained GPT-2 checkpoint as a version of the base model.

    It is evaluated on this workspace's validation split, encoded with the checkpoint's own
    tokenizer (--set tokenizer.pretrained=SPEC), so continued pretraining from it must beat it.
    A new folder becomes a workspace, and the data stages run first when their inputs changed,
    as `gptops run` does.
    """
    from dataclasses import asdict, replace

    from gpt import dvc_repo, registry
    from gpt.hf import resolve
    from gpt.params_file import apply_run_overrides, restore_params
    from gpt.pipeline import steps
    from gpt.pipeline.context import RunContext
    from gpt.preflight import check_benchmarks, check_tracking_uri
    from gpt.workspace_lock import workspace_lock

    setup_logging()
    resolve(spec, key="gptops import")  # the checkpoint itself first: a missing folder is named
    ws = dvc_repo.ensure_workspace(workdir, init=init)  # checks the folder first
    params = _params(ws, profile, [*(overrides or []), f"model.init_from={spec}"])
    check_benchmarks(params)
    ctx = RunContext.of(ws, params)
    check_tracking_uri(ctx.tracking_uri)
    with workspace_lock(ws, f"gptops import {spec}"):
        apply_run_overrides(ws, overrides)
        try:
            for stage in dvc_repo.STAGES:  # DVC reuses them when nothing changed
                dvc_repo.run_stage(ws, stage)
            ctx = replace(ctx, data_version=dvc_repo.data_version(ws))
            log.info("import: evaluating %s on data version %s (validation split of data "
                     "source %s)", spec, ctx.data_version, params.data.source)
            with registry.pipeline_run(ctx.tracked(),
                                       registry.cli_run_name("import")) as tracking:
                out = asdict(steps.import_step(replace(ctx, tracking=tracking), spec))
        finally:
            restore_params(ws)
    if as_json:
        console.print_json(json.dumps(out, default=str))
    else:
        _print_rows(f"imported {spec}", [(k, _fmt(v)) for k, v in out.items()])


@app.command("register-checkpoint")
def register_checkpoint(
        step: Annotated[int | None, typer.Argument(
            min=1, help="the checkpoint's optimizer step (default: the kept checkpoint with the "
            "lowest validation loss)", show_default=False)] = None,
        workdir: Workdir = Path("."), profile: Profile = DEFAULT_PROFILE,
        overrides: Overrides = None, as_json: JsonFlag = False,
        list_: Annotated[bool, typer.Option("--list", help="list the kept checkpoints (step, "
                                            "validation loss, MLflow model id); register "
                                            "nothing")] = False) -> None:
    """Register a kept pretraining checkpoint, not only the final weights, as a base version.

    The checkpoints are those of the pretraining that these data and params (--profile, --set)
    select; each is an MLflow logged model ranked by its validation loss. The one chosen is
    evaluated, tagged and gated like any base model.
    """
    from dataclasses import asdict, replace

    from gpt import registry, stopping
    from gpt.dvc_repo import data_version
    from gpt.pipeline import keys, steps
    from gpt.pipeline.context import RunContext
    from gpt.preflight import check_benchmarks, check_tracking_uri
    from gpt.registry import checkpoints
    from gpt.workspace_lock import workspace_lock

    setup_logging()
    params = _params(workdir, profile, overrides)
    ctx = RunContext.of(workdir, params, data_version=data_version(workdir))
    check_tracking_uri(ctx.tracking_uri)
    if list_:
        key = keys.pretrain(params, ctx.data_version)
        rows = [checkpoints.describe(m) for m in checkpoints.kept(
            ctx.tracking_uri, params.registry.experiment, key.digest)]
        if as_json:
            console.print_json(json.dumps(rows, default=str))
            return
        table = Table(title=f"kept checkpoints of pretrain {key.short}, best first",
                      title_justify="left")
        for col in ("step", "val_loss", "model id", "run"):
            table.add_column(col, no_wrap=True)
        for r in rows:
            table.add_row(str(r["step"]), "" if r["val_loss"] is None else
                          f"{r['val_loss']:.4f}", r["model_id"], r["run_id"] or "")
        console.print(table)
        return
    check_benchmarks(params)
    with stopping.on_signals("register-checkpoint"), \
            workspace_lock(workdir, "gptops register-checkpoint"), \
            registry.pipeline_run(ctx.tracked(), registry.cli_run_name("register-checkpoint"),
                                  registry.tracking.workspace_id(workdir)) as tracking:
        out = asdict(steps.register_checkpoint_step(replace(ctx, tracking=tracking), step))
    if as_json:
        console.print_json(json.dumps(out, default=str))
    else:
        _print_rows("registered checkpoint", [(k, _fmt(v)) for k, v in out.items()])


ModelName = Annotated[str, typer.Option("--model", "-m", help="registered model name "
                                        "(default: from params.yaml's registry section)")]
#: "" = the champion (:data:`gpt.registry.CHAMPION`, looked up when a command runs: the
#: registry is not imported for --help).
Alias = Annotated[str, typer.Option(help="registry alias (default: the model's champion)")]
Version = Annotated[str, typer.Option("--version", "-v", help="a version number instead of "
                                      "the alias")]
TrackingUri = Annotated[str, typer.Option(help="MLflow URI (default: the workspace's)")]


def _ref(workdir: Path, tracking_uri: str, model: str, default_kind: str, alias: str,
         version: str):  # -> gpt.registry.ModelRef
    from gpt.pipeline.candidates import model_name
    from gpt.registry import CHAMPION, ModelRef
    from gpt.registry.models import check_ref_quickly

    params = _params(workdir)
    # The pipeline's own naming rule: a task file's classifier is found under its own name.
    ref = ModelRef(uri=_tracking_uri(workdir, params, tracking_uri),
                   name=model or model_name(default_kind, params), alias=alias or CHAMPION,
                   version=version)
    check_ref_quickly(ref)  # a mistyped alias or version: refused before MLflow starts
    return ref


def _in_range(low: float, high: float = math.inf, low_open: bool = False,
              meaning: str = ""):  # -> a typer callback
    """A typer callback refusing values outside ``[low, high]`` (``(low, high]`` when
    ``low_open``), NaN and infinities included, as a usage error (exit 2) naming the range.
    Click's own ranges let NaN through (every comparison with NaN is false)."""

    def check(value: float) -> float:
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            lo = f"> {low:g}" if low_open else f">= {low:g}"
            span = lo if math.isinf(high) else f"{lo} and <= {high:g}"
            raise typer.BadParameter(f"{value} is not in the valid range: a finite number "
                                     f"{span}{meaning}")
        return value

    return check


def _quiet_libraries() -> None:
    """No library log lines in a command's output (MLflow's "'models:/...' resolved as ...",
    transformers' notices): their warnings and below are dropped, errors still show."""
    for name in ("mlflow", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@app.command()
def generate(prompt: Annotated[str, typer.Argument(help="text to continue")],
             workdir: Workdir = Path("."), model: ModelName = "", alias: Alias = "",
             version: Version = "",
             max_new_tokens: Annotated[int, typer.Option(
                 "--max-new-tokens", "-n", callback=_in_range(1),
                 help="tokens to generate (>= 1)")] = 80,
             temperature: Annotated[float, typer.Option(
                 "--temperature", "-t", callback=_in_range(0, meaning=" (0 = greedy)"),
                 help="sampling temperature (>= 0; 0 = greedy)")] = 0.8,
             top_k: Annotated[int, typer.Option(
                 "--top-k", callback=_in_range(0, meaning=" (0 = off)"),
                 help="sample among the k likeliest tokens (>= 0; 0 = off)")] = 50,
             top_p: Annotated[float, typer.Option(
                 "--top-p", callback=_in_range(0, 1, low_open=True),
                 help="nucleus sampling mass (> 0 and <= 1; 1 = off)")] = 0.95,
             seed: Annotated[int, typer.Option()] = 0,
             tracking_uri: TrackingUri = "") -> None:
    """Sample text from a registered language model (default: the base champion), streaming.

    The context slides: only the last block_size tokens are fed to the model.
    """
    ref = _ref(workdir, tracking_uri, model, BASE.name, alias, version)  # before torch loads
    _quiet_libraries()
    import torch

    from gpt.registry.models import load_language_model

    gpt_model, tok = load_language_model(ref)
    ids = tok.encode(prompt) or [tok.eos_token_id]
    x = torch.tensor([ids], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    for nxt in gpt_model.generate_stream(x, max_new_tokens, temperature=temperature,
                                         top_k=top_k, top_p=top_p,
                                         stop_token=tok.eos_token_id, generator=g):
        token = int(nxt[0, 0])
        if token == tok.eos_token_id:
            break
        sys.stdout.write(tok.decode([token]))
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def predict(texts: Annotated[list[str] | None, typer.Argument(help="texts to classify "
                                                               "(default: one per stdin line)")]
            = None,
            workdir: Workdir = Path("."), model: ModelName = "", alias: Alias = "",
            version: Version = "", tracking_uri: TrackingUri = "",
            as_json: JsonFlag = False) -> None:
    """Classify texts with a registered classifier (default: the task model's champion)."""
    items = list(texts or []) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not items:
        raise GptopsError("predict: no text given; pass texts as arguments or one per line on "
                          "stdin")
    ref = _ref(workdir, tracking_uri, model, TASK.name, alias, version)
    _quiet_libraries()
    from gpt.registry.models import predict_labels

    results = predict_labels(ref, items)
    if as_json:
        console.print_json(json.dumps(results))
        return
    table = Table(title=f"{ref.describe()}", title_justify="left")
    for col in ("text", "label", "score"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r["text"][:200], r["label"], f"{r['score']:.3f}")
    console.print(table)


@app.command()
def export(out: Annotated[Path, typer.Argument(help="folder to write (must not exist or be "
                                               "empty)")],
           workdir: Workdir = Path("."), model: ModelName = "", alias: Alias = "",
           version: Version = "", tracking_uri: TrackingUri = "") -> None:
    """Write a registered version as a Hugging Face folder (for `transformers.pipeline`)."""
    from gpt.registry import export_hf

    ref = _ref(workdir, tracking_uri, model, BASE.name, alias, version)
    _quiet_libraries()
    task = export_hf(ref, out)
    console.print(f"{ref.describe()} -> {out} ({task}); load it with "
                  f"transformers.pipeline({task!r}, model={str(out)!r})", highlight=False,
                  soft_wrap=True)


@app.command()
def models(workdir: Workdir = Path("."),
           name: Annotated[str, typer.Option(help="only this registered model")] = "",
           history: Annotated[bool, typer.Option("--history", help="also show each model's "
                                                 "champion history")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="print JSON (every tag of "
                                                 "every version)")] = False,
           tracking_uri: TrackingUri = "") -> None:
    """List registered models, versions, aliases, lineage and metrics."""
    from gpt.registry import champion_history, list_versions

    uri = _tracking_uri(workdir, given=tracking_uri)
    if name:
        champion_history(uri, name)  # unknown model: one-line error listing the known ones
    rows = list_versions(uri, name or None)
    if as_json:
        names = sorted({r["name"] for r in rows})
        out = {"tracking_uri": uri, "versions": rows,
               **({"history": {n: champion_history(uri, n) for n in names}} if history else {})}
        print(json.dumps(out, indent=2))
        return
    columns = ("model", "version", "aliases", "parent", "data", "commit", "code",
               "primary metric")
    cells = [_version_cells(r) for r in rows]
    table = Table(title=f"registered models at {uri}", title_justify="left")
    for i, col in enumerate(columns):
        # Names and ids are never cut: a cut name cannot be copied into the next command.
        width = max([len(col)] + [len(c[i]) for c in cells])
        table.add_column(col, no_wrap=True, min_width=width)
    for c in cells:
        table.add_row(*c)
    # Piped or narrow: the table keeps its full width rather than cutting names.
    Console(width=max(console.width, _table_width([columns, *cells]))).print(table)
    if history:
        for model_name in sorted({r["name"] for r in rows}):
            _print_history(model_name, champion_history(uri, model_name))


def _version_cells(row: dict) -> tuple[str, ...]:
    """One version's row of `gptops models`: name, version, aliases (and `rejected` when the
    gate refused it), parent, data version, commit (``+dirty`` when its code had uncommitted
    changes), code hash, and the gate's metric (``val_ppl=455.3``: 4 significant digits, or as
    stored when it is not a number)."""
    from gpt.registry.tags import METRIC_PREFIX, REJECTED, VersionTags

    t = VersionTags.from_tags(row["tags"])
    aliases = [*row["aliases"], REJECTED] if t.rejected is not None else row["aliases"]
    m = t.primary_metric
    metric = "" if not m else f"{m}={t.metrics[m]:.4g}" if m in t.metrics \
        else f"{m}={row['tags'].get(METRIC_PREFIX + m, '')}"
    commit = t.git_commit[:12] + ("+dirty" if t.git_dirty else "")
    return (row["name"], row["version"], ",".join(aliases), t.parent, t.data_version, commit,
            t.code_hash[:8], metric)


def _table_width(cells: list[tuple[str, ...]]) -> int:
    if not cells:
        return 0
    return sum(max(len(c[i]) for c in cells) + 3 for i in range(len(cells[0]))) + 1


def _print_history(name: str, history: list[dict]) -> None:
    table = Table(title=f"{name}: champion history (oldest first)", title_justify="left")
    for col in ("at", "action", "champion", "previous"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for h in history:
        action = h.get("action", "gate") + (" --force" if h.get("overrode") else "")
        if h.get("overrode"):
            reason = f"{h.get('reason', '')} (overrode the gate's rejection: {h['overrode']})"
        else:
            reason = h.get("reason", "")
        table.add_row(h.get("at", ""), action, f"v{h['version']}",
                      f"v{h['previous']}" if h.get("previous") else "", reason)
    console.print(table)


Reason = Annotated[str, typer.Option("--reason", "-r", help="why (kept in the champion "
                                     "history)")]


@app.command()
def promote(model: Annotated[str, typer.Argument(help="registered model name")],
            version: Annotated[str, typer.Argument(help="version to make champion")],
            reason: Reason,
            workdir: Workdir = Path("."),
            tracking_uri: TrackingUri = "",
            force: Annotated[bool, typer.Option("--force", help="promote a version the gate "
                                                "rejected (the override is recorded)")] = False,
            ) -> None:
    """Make VERSION the champion of MODEL by hand (recorded with its reason)."""
    from gpt import registry

    uri = _tracking_uri(workdir, given=tracking_uri)
    out = registry.promote(uri, model, version, reason, force=force)
    if out.get("overrode"):
        console.print(f"warning: {model} v{out['version']} was rejected by the gate "
                      f"({out['overrode']}); promoted with --force (recorded in the champion "
                      "history)", highlight=False, soft_wrap=True)
    console.print(f"{model}: champion v{out['previous'] or '-'} -> v{out['version']} "
                  f"({out['reason']})", highlight=False)


@app.command()
def rollback(model: Annotated[str, typer.Argument(help="registered model name")],
             reason: Reason,
             workdir: Workdir = Path("."),
             tracking_uri: TrackingUri = "") -> None:
    """Move MODEL's champion back to the previous champion (recorded with its reason)."""
    from gpt import registry

    uri = _tracking_uri(workdir, given=tracking_uri)
    out = registry.rollback(uri, model, reason)
    console.print(f"{model}: champion v{out['previous']} -> v{out['version']} (rollback: "
                  f"{out['reason']})", highlight=False)


@app.command()
def doctor(workdir: Workdir = Path(".")) -> None:
    """Check the environment: versions, CUDA, workspace files, tracking URI."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "missing"

    console.print("  ".join(f"{p} {v(p)}" for p in ("gptops", "torch", "transformers",
                                                     "mlflow", "prefect", "dvc")),
                  highlight=False, soft_wrap=True)
    console.print(f"python {sys.version.split()[0]}  cpus: {os.cpu_count()}  NVIDIA driver: "
                  f"{'yes' if Path('/proc/driver/nvidia/version').exists() else 'no'} "
                  "(torch decides at training time)", highlight=False, soft_wrap=True)
    ws = Workspace(Path(workdir))
    for f in (ws.params_yaml, ws.dvc_yaml, ws.dvc_dir):
        console.print(f"{f.name}: {'ok' if f.exists() else 'missing'}")
    console.print(f"dvc.lock: {_lock_state(Path(workdir))}", soft_wrap=True, highlight=False)
    try:
        uri = _tracking_uri(workdir, _params(workdir), check=False)
    except GptopsError as exc:  # a doctor reports, it does not stop at the first problem
        uri = f"unknown ({exc})"
    console.print(f"tracking URI: {uri}", soft_wrap=True, highlight=False)
    api = os.environ.get("PREFECT_API_URL")
    console.print(f"Prefect: {api or 'the workspace database .gptops/prefect.db'}",
                  soft_wrap=True)
    for check in DOCTOR_CHECKS:
        for line in check(Path(workdir)):
            console.print(line, soft_wrap=True, highlight=False)
    chromium = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p
                     and os.access(p, os.X_OK)), "")
    missing = "missing (only the browser tests need it: apt-get install chromium)"
    console.print(f"chromium: {chromium or missing}", soft_wrap=True, highlight=False)


#: More `gptops doctor` lines, added by the orchestration layer (flows.cli: a live `serve`).
DOCTOR_CHECKS: list[Callable[[Path], list[str]]] = []


def _lock_state(workdir: Path) -> str:
    """``dvc.lock`` against git: committed, changed since the last commit, or not in git."""
    import subprocess

    lock = Workspace(workdir).dvc_lock
    if not lock.is_file():
        return "missing (the data stages have not run here yet)"
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "dvc.lock"], cwd=workdir,
                                 capture_output=True, timeout=10).returncode == 0
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "dvc.lock"],
                                 cwd=workdir, capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.TimeoutExpired):
        return "ok (git not available to compare)"
    if not tracked:
        return "ok (not in git: the data version is not tied to a commit)"
    if changed:
        return ("changed since the last git commit: commit it (git add dvc.lock && git commit) "
                "so the commit names this data version")
    return "ok (committed)"


def _click():  # typer bundles its own click (typer._click) since 0.2x
    try:
        import typer._click as bundled  # type: ignore[import-not-found]

        return bundled
    except ImportError:  # pragma: no cover - older typer
        import click

        return click


def _tidy_help() -> None:
    """Help text as users read it: no ``<bool>`` after a flag, and arguments in usage lines as
    ``MODEL VERSION`` (optional ones in brackets) instead of typer 0.29's ``{model} {version}``."""
    from typer.core import TyperArgument, TyperOption

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag and self.metavar is None:
            return None
        return _option_type(self, ctx)

    def usage_name(self: TyperArgument) -> str:
        name = (self.metavar or self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    _option_type = TyperOption.display_type_rich
    if getattr(_option_type, "__name__", "") != "display_type_rich" or \
            not hasattr(TyperArgument, "_usage_display_name"):
        return  # another typer: leave its help as it is
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
    TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
    TyperArgument._rich_display_name = lambda self: (self.metavar or self.name or "").upper() \
        + ("..." if self.nargs != 1 else "")  # type: ignore[method-assign]


def run_app(application: typer.Typer) -> None:
    """Run a typer app: usage errors print the usage and one line (exit 2), input errors one
    line (exit 2), a dead training process one line (exit 1), Ctrl-C exits with 130."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    _tidy_help()
    try:
        _run_app(application)
    finally:
        # The interpreter's last garbage collection over torch, pandas, Prefect and MLflow
        # objects takes ~2 s even on an idle machine (a stop must end within 5 s on a busy
        # one), and all cleanup (locks, params.yaml, servers, atexit's flushes) is done or
        # still runs: leave those objects out of it.
        import gc

        gc.freeze()


def _run_app(application: typer.Typer) -> None:
    click = _click()
    try:
        application(standalone_mode=False)
    except GptopsError as exc:
        if os.environ.get(ERROR_FILE_ENV):  # let a parent (DVC → pipeline) surface the message
            with contextlib.suppress(OSError):  # a full disk: the line below still says it
                Path(os.environ[ERROR_FILE_ENV]).write_text(str(exc), encoding="utf-8")
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except RankFailed as exc:  # a training process died: one line, and it is not an input error
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Interrupted as exc:  # SIGTERM/SIGINT: stopped cleanly (training saved a checkpoint)
        if os.environ.get(ERROR_FILE_ENV):  # a data stage run for a pipeline: the pipeline says it
            with contextlib.suppress(OSError):
                Path(os.environ[ERROR_FILE_ENV]).write_text(str(exc), encoding="utf-8")
        else:
            console.print(f"interrupted: {exc}", highlight=False, soft_wrap=True)
        sys.exit(128 + exc.signum)
    except (typer.Abort, KeyboardInterrupt):  # typer >= 0.29 has no click.exceptions.Abort
        console.print("interrupted", highlight=False)
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)


def main() -> None:
    run_app(app)
