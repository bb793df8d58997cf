"""The ``gptops`` console script: the library commands plus ``run`` and ``serve`` (Prefect)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.deploy import NIGHTLY_CRON, NIGHTLY_TIMEZONE
from gpt.cli import (
    DOCTOR_CHECKS,
    BaseOpt,
    Overrides,
    Profile,
    Workdir,
    app,
    console,
    run_app,
    setup_logging,
)
from gpt.defaults import DEFAULT_PROFILE, MLFLOW_PORT, PREFECT_PORT

if TYPE_CHECKING:
    from gpt.pipeline.context import RunContext


@app.command()
def run(workdir: Workdir = Path("."), profile: Profile = DEFAULT_PROFILE,
        overrides: Overrides = None,
        max_steps: Annotated[int | None, typer.Option(help="pretraining steps (default: the "
                                                      "profile's train.max_steps)")] = None,
        reclean: Annotated[bool, typer.Option(help="re-run cleaning even if unchanged")] = False,
        reingest: Annotated[bool, typer.Option(help="re-read data.source even if unchanged "
                                               "(DVC does not track a local source's files: "
                                               "new ones are read only so)")] = False,
        save: Annotated[bool, typer.Option("--save", help="keep --set data overrides in "
                                           "params.yaml (default: this run only)")] = False,
        base: BaseOpt = "",
        init: Annotated[bool, typer.Option("--init", help="make a non-empty folder that is not "
                                           "a workspace into one")] = False,
        no_wait: Annotated[bool, typer.Option("--no-wait", help="fail at once when another run "
                                              "holds the workspace (default: wait for it)")
                           ] = False,
        ) -> None:
    """Run the whole pipeline as the Prefect flow `training_pipeline`.

    Flow runs are recorded in the workspace's Prefect database (.gptops/prefect.db, the one
    `gptops serve` shows), or on the server PREFECT_API_URL names.
    """
    setup_logging()
    from gpt import stopping

    # SIGTERM/SIGINT at any point: one line naming the step, exit 143/130, locks released.
    with stopping.on_signals("gptops run"):
        result, team, ws = _run(workdir, profile, overrides, max_steps, reclean, save, base,
                                init, no_wait, reingest)
    from flows.report import summary_rows

    table = Table(title="gptops run summary", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for k, v in summary_rows(result):
        table.add_row(k, v)
    console.print(table)
    _where_to_look(result["tracking_uri"], team, ws, result.get("flow_run_id"))


def _run(workdir: Path, profile: str, overrides: list[str] | None, max_steps: int | None,
         reclean: bool, save: bool, base: str, init: bool, no_wait: bool,
         reingest: bool = False) -> tuple[dict, str, Path]:
    """Check every input, then run the flow on the workspace's Prefect server."""
    from flows.server import workspace_api
    from gpt import stopping
    from gpt.pipeline.context import handed_over, prepare_run

    extra = list(overrides or []) + ([f"train.max_steps={max_steps}"] if max_steps else [])
    # Every input is checked before the Prefect server, DVC or torch start; the flow takes
    # these checks (handed_over) instead of repeating them.
    ctx = prepare_run(workdir, profile, extra, base, init=init)
    team = os.environ.get("PREFECT_API_URL", "")
    # The flow's and its steps' imports (Prefect's engine, torch) run while the server boots,
    # then MLflow's store opens in a thread (the flow waits for it after the data stages).
    with workspace_api(ctx.workdir, meanwhile=lambda: _import_flow(ctx)), handed_over(ctx):
        from prefect.exceptions import CancelledRun

        from flows.pipeline import training_pipeline

        try:
            result = training_pipeline(profile=profile, reclean=reclean, reingest=reingest,
                                       save_overrides=save,
                                       overrides=extra, base=base, workdir=str(ctx.workdir),
                                       wait=not no_wait)
        except CancelledRun as exc:  # the flow run ended Cancelled by a stop: its one line
            stop = stopping.stopped()
            if stop is None:
                raise
            raise stop from exc
    return result, team, ctx.workdir


def _import_flow(ctx: RunContext) -> None:
    import flows.pipeline  # noqa: F401
    import gpt.pipeline.steps  # noqa: F401 - torch and pandas: every run's steps import them
    from gpt.registry.tracking import open_store_soon

    open_store_soon(ctx.tracking_uri, ctx.params.registry.experiment)


def _where_to_look(uri: str, team_api: str, ws: Path, flow_run_id: str | None = None) -> None:
    """Commands and links to copy, each on its own line, never wrapped by us: the live
    `gptops serve`'s addresses when one runs on this workspace, else the command that opens
    both UIs on this run's history."""
    from flows.server import served

    here = Path.cwd().resolve() == ws
    wflag = "" if here else f" -w {ws}"
    live = None if team_api else served(ws)
    lines = ["", "[bold]Where to look[/bold]"]
    if team_api:
        ui = team_api.rstrip("/").removesuffix("/api")
        lines += ["  This run in the Prefect UI (PREFECT_API_URL):",
                  f"    {ui}/runs/flow-run/{flow_run_id}" if flow_run_id else f"    {ui}"]
    elif live:
        lines += ["  This run in the Prefect UI (`gptops serve` is running):",
                  f"    {live['ui']}/runs/flow-run/{flow_run_id}" if flow_run_id
                  else f"    {live['ui']}"]
        if live["mlflow_ui"]:
            lines += ["  Registered models in the MLflow UI:", f"    {live['mlflow_ui']}/#/models"]
    else:
        lines += ["  Both UIs, the schedule and the Run button (this run is in its history):",
                  f"    gptops serve{wflag}",
                  f"    (Prefect UI http://127.0.0.1:{PREFECT_PORT}, "
                  f"MLflow UI http://127.0.0.1:{MLFLOW_PORT})"]
    lines += ["  Registered models:", f"    gptops models{wflag}",
              "  Generate from the base model's champion:",
              f"    gptops generate{wflag} \"Return the\"",
              "  The MLflow UI alone:", f"    mlflow ui --backend-store-uri {uri}"]
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)


def _serve_status(ws: Path) -> list[str]:
    """`gptops doctor`'s line about a live `gptops serve` on the workspace and its addresses."""
    from flows.server import served

    live = served(ws)
    if not live:
        return ["gptops serve: not running on this workspace (it starts both UIs)"]
    return [f"gptops serve: running, Prefect UI {live['ui']}, "
            f"MLflow UI {live['mlflow_ui'] or '(unknown)'}"]


DOCTOR_CHECKS.append(_serve_status)


@app.command()
def serve(workdir: Workdir = Path("."),
          host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
          prefect_port: Annotated[int, typer.Option(help="Prefect server port")] = PREFECT_PORT,
          mlflow_port: Annotated[int, typer.Option(help="MLflow server port")] = MLFLOW_PORT,
          prefect_db: Annotated[str, typer.Option(help="Prefect database URL (default: "
                                                  "SQLite under .gptops/)")] = "",
          mlflow_backend: Annotated[str, typer.Option(help="MLflow backend store URI "
                                                      "(default: the workspace's)")] = "",
          cron: Annotated[str, typer.Option(help="nightly schedule (cron)")] = NIGHTLY_CRON,
          timezone: Annotated[str, typer.Option(help="schedule timezone")] = NIGHTLY_TIMEZONE,
          init: Annotated[bool, typer.Option("--init", help="make a non-empty folder that is "
                                             "not a workspace into one")] = False,
          notify: Annotated[list[str] | None, typer.Option(
              "--notify", help="webhook URL for gate decisions and failed runs (Slack/Teams "
              "JSON; repeatable; adds to params.yaml notify.webhooks)")] = None,
          ) -> None:
    """Start the Prefect server + deployments (nightly, retrain, retrain-on-data), the data
    watcher, notifications and the MLflow UI."""
    setup_logging()
    from flows.serve import serve_all

    serve_all(workdir=workdir, host=host, prefect_port=prefect_port, mlflow_port=mlflow_port,
              prefect_db=prefect_db, mlflow_backend=mlflow_backend, cron=cron,
              timezone=timezone, init=init, notify=tuple(notify or ()))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
