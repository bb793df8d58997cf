"""The ``gptops`` console script: the library commands plus ``run`` and ``serve`` (Prefect)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gpt.cli import Overrides, Profile, Workdir, app, console, run_app, setup_logging


@app.command()
def run(workdir: Workdir = Path("."), profile: Profile = "tiny", overrides: Overrides = None,
        max_steps: Annotated[int | None, typer.Option(help="pretraining steps")] = None,
        reclean: Annotated[bool, typer.Option(help="re-run cleaning even if unchanged")] = False,
        ) -> None:
    """Run the whole pipeline as the Prefect flow `training_pipeline`."""
    setup_logging()
    from flows.pipeline import training_pipeline
    from gpt.report import summary_rows

    result = training_pipeline(profile=profile, max_steps=max_steps, reclean=reclean,
                               overrides=list(overrides or []), workdir=str(workdir))
    table = Table(title="gptops run summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in summary_rows(result):
        table.add_row(k, v)
    console.print(table)
    uri = result["tracking_uri"]
    console.print("\n[bold]Where to look[/bold]")
    console.print(f"  MLflow UI:  mlflow ui --backend-store-uri {uri} --host 127.0.0.1 "
                  "--port 5000   (then http://127.0.0.1:5000)")
    console.print("  Prefect UI: prefect server start --host 127.0.0.1   (then "
                  "http://127.0.0.1:4200)  — or `gptops serve` for both plus schedules")
    console.print("  Generate:   gptops generate \"Return the\"")


@app.command()
def serve(workdir: Workdir = Path("."),
          host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
          prefect_port: Annotated[int, typer.Option(help="Prefect server port")] = 4200,
          mlflow_port: Annotated[int, typer.Option(help="MLflow server port")] = 5000,
          prefect_db: Annotated[str, typer.Option(help="Prefect database URL (default: "
                                                  "SQLite under .gptops/)")] = "",
          mlflow_backend: Annotated[str, typer.Option(help="MLflow backend store URI "
                                                      "(default: the workspace's)")] = "",
          cron: Annotated[str, typer.Option(help="nightly schedule (cron)")] = "0 2 * * *",
          timezone: Annotated[str, typer.Option(help="schedule timezone")] = "UTC",
          ) -> None:
    """Start the Prefect server + deployments (nightly, retrain) and the MLflow UI."""
    setup_logging()
    from flows.serve import serve_all

    serve_all(workdir=workdir, host=host, prefect_port=prefect_port, mlflow_port=mlflow_port,
              prefect_db=prefect_db, mlflow_backend=mlflow_backend, cron=cron,
              timezone=timezone)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
