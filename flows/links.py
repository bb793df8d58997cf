"""Links between the two UIs, only to pages a UI serves.

A pipeline run links to its Prefect flow run (a tag and a description line on its MLflow runs and
model versions) and to its MLflow pipeline run and model versions (its Prefect summary and link
artifacts). A link is made only when a UI answers at its address while the run runs: a running
``gptops serve`` on the workspace (both UIs) or a team server's UI. Otherwise the flow run's id
alone is recorded (``prefect_flow_run_id``), and no dead link is written anywhere.

The URL shapes are the UIs' own: ``<prefect>/runs/flow-run/<id>`` (Prefect's ``url_for``),
``<mlflow>/#/experiments/<experiment id>/runs/<run id>`` and
``<mlflow>/#/models/<name>/versions/<version>``.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request

#: The MLflow UI of a live ``gptops serve`` (set in its runner's environment, and by
#: ``flows.server.workspace_api`` for a ``gptops run`` on a served workspace).
MLFLOW_UI_ENV = "GPTOPS_MLFLOW_UI"


def answers(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url`` answers 200 to a browser's request (a page or an API call a UI serves;
    Prefect's UI serves a deep link's page only to a request that accepts HTML)."""
    req = urllib.request.Request(url, headers={"Accept": "text/html,application/json,*/*"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - a UI's address
            return r.status == 200
    except (OSError, ValueError):
        return False


def flow_run_page(flow_run_id: str | None) -> str:
    """The flow run's page in the Prefect UI, when a UI serves it; else ""."""
    if not flow_run_id:
        return ""
    from prefect.settings import get_current_settings
    from prefect.utilities.urls import url_for

    ui = (get_current_settings().ui_url or "").rstrip("/")
    # A server started without its UI (a `gptops run` alone, a test harness) answers 404 there.
    if not ui or not answers(f"{ui}/"):
        return ""
    return url_for("flow-run", obj_id=flow_run_id) or ""


def mlflow_ui() -> str:
    """The MLflow UI of a live ``gptops serve``, when it answers; else ""."""
    ui = os.environ.get(MLFLOW_UI_ENV, "").rstrip("/")
    return ui if ui and answers(f"{ui}/health") else ""


def serves_run(ui: str, run_id: str) -> bool:
    """Whether the MLflow UI at ``ui`` shows the run ``run_id`` (it reads the run's store)."""
    query = urllib.parse.urlencode({"run_id": run_id})
    return answers(f"{ui}/api/2.0/mlflow/runs/get?{query}")


def run_page(ui: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def version_page(ui: str, name: str, version: str) -> str:
    """A model version's page in the MLflow UI."""
    return f"{ui.rstrip('/')}/#/models/{urllib.parse.quote(name)}/versions/{version}"


def mlflow_pages(ui: str, experiment_id: str, run_id: str | None,
                 registered: dict[str, dict]) -> dict[str, str]:
    """``{"run": <the pipeline run's page>, <kind>: <its version's page>, ...}`` when the MLflow
    UI at ``ui`` shows this run (it serves the store the run wrote to); else ``{}``."""
    if not ui or not run_id or not serves_run(ui, run_id):
        return {}
    pages = {"run": run_page(ui, experiment_id, run_id)}
    for kind, reg in registered.items():
        if reg.get("name") and reg.get("version"):
            pages[kind] = version_page(ui, reg["name"], str(reg["version"]))
    return pages
