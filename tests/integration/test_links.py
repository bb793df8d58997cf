"""Links a run prints work: the live `gptops serve`'s own addresses when one runs on the
workspace (whatever its ports), else the command that opens the UIs on this run's history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT


def _where(ws: Path, flow_run_id: str | None = "abc", team: str = "") -> str:
    from rich.console import Console

    import flows.cli

    console = Console(record=True, width=200)
    saved = flows.cli.console
    flows.cli.console = console
    try:
        flows.cli._where_to_look("sqlite:///x.db", team, ws, flow_run_id)
    finally:
        flows.cli.console = saved
    return console.export_text()


def _serve_file(ws: Path, api: str, mlflow_ui: str) -> None:
    (ws / ".gptops").mkdir(parents=True, exist_ok=True)
    (ws / ".gptops" / "serve.json").write_text(json.dumps(
        {"api": api, "mlflow_ui": mlflow_ui, "pid": os.getpid()}))


def test_links_follow_a_live_serve_on_other_ports(tmp_path, prefect_server):
    ws = tmp_path / "ws"
    ws.mkdir()
    out = _where(ws)
    assert "gptops serve -w" in out and "/runs/flow-run/" not in out  # nothing live: the command
    ui = prefect_server.rstrip("/").removesuffix("/api")  # a real server, on a random port
    _serve_file(ws, prefect_server, "http://127.0.0.1:5310")
    out = _where(ws)
    assert f"{ui}/runs/flow-run/abc" in out
    assert "http://127.0.0.1:5310/#/models" in out
    assert ":4200" not in out and ":5000" not in out
    doctor = subprocess.run([sys.executable, "-m", "flows.cli", "doctor", "-w", str(ws)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert f"gptops serve: running, Prefect UI {ui}, MLflow UI http://127.0.0.1:5310" \
        in doctor.stdout, doctor.stdout + doctor.stderr


def test_a_dead_serve_file_is_ignored(tmp_path):
    ws = tmp_path / "ws"
    _serve_file(ws, "http://127.0.0.1:1/api", "http://127.0.0.1:2")  # nothing answers there
    out = _where(ws)
    assert "gptops serve -w" in out and "127.0.0.1:1" not in out


def test_a_team_server_links_to_the_run(tmp_path):
    out = _where(tmp_path, "f00", team="http://127.0.0.1:4999/api")
    assert "http://127.0.0.1:4999/runs/flow-run/f00" in out


# --- a run's links between the UIs, and its Prefect artifacts (issue 27 item 16, 28 item 5) ---

def _artifacts(api: str, flow_run_id: str) -> dict:
    """The flow run's artifacts by key (the latest of each)."""
    import asyncio

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with PrefectClient(api=api) as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))

    return {a.key: a for a in sorted(asyncio.run(read()), key=lambda a: a.updated)}


def _served(ui: str, path: str) -> bool:
    from flows.links import answers

    return answers(f"{ui}{path}")


@pytest.mark.slow
def test_a_run_without_uis_keeps_the_id_and_writes_no_link(pipeline_run, prefect_server):
    """The session's runs have a Prefect server without a UI and no MLflow UI: every run and
    version names its flow run by id, and nothing links anywhere. Its artifacts: each training
    step's progress (at 100), a table per evaluated model."""
    from mlflow import MlflowClient

    _ws, first, _ = pipeline_run
    assert first["prefect_flow_run_url"] == "" and first["mlflow_pages"] == {}
    c = MlflowClient(first["tracking_uri"])
    parent = c.get_run(first["mlflow_run_id"]).data.tags
    assert parent["prefect_flow_run_id"] == first["flow_run_id"]
    assert "prefect_flow_run_url" not in parent and "http" not in parent["mlflow.note.content"]
    for reg in first["registered"].values():
        tags = c.get_model_version(reg["name"], reg["version"]).tags
        assert tags["prefect_flow_run_id"] == first["flow_run_id"]
        assert "prefect_flow_run_url" not in tags

    arts = _artifacts(prefect_server, first["flow_run_id"])
    for step in ("pretrain", "finetune", "sft"):
        assert arts[f"{step}-progress"].type == "progress"
        assert float(arts[f"{step}-progress"].data) == 100.0, arts[f"{step}-progress"]
    for kind in first["evaluation"]:
        table = arts[f"{kind}-evaluation"]
        rows = json.loads(table.data) if isinstance(table.data, str) else table.data
        assert {"metric", "value", "baseline", "champion"} == set(rows[0])
    task = {r["metric"]: r for r in json.loads(arts["task-evaluation"].data)}
    assert task["macro_f1"]["baseline"] is not None  # the majority-class baseline beside it
    assert not [k for k in arts if k.startswith("mlflow-")]  # no MLflow UI: no link


@pytest.mark.slow
def test_a_served_workspace_links_both_ways(pipeline_run, tmp_path):
    """`gptops run` on a workspace that `gptops serve` serves: its MLflow runs and new model
    version link to its flow run's page, and its Prefect artifacts link to its MLflow run and
    version pages; every link is a page the live UIs serve."""
    import shutil

    from mlflow import MlflowClient

    from tests.conftest import RUN_OVERRIDES
    from tests.serving import GPTOPS, start_serve, stop_serve

    ws = tmp_path / "ws"
    shutil.copytree(pipeline_run[0], ws, symlinks=True)  # trained: only the classifier retrains
    proc, api, mlflow_ui = start_serve(ws, tmp_path / "serve.log")
    try:
        sets = [a for o in [*RUN_OVERRIDES, "finetune.max_steps=40"] for a in ("--set", o)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        out = subprocess.run([GPTOPS, "run", "-w", str(ws), *sets], capture_output=True,
                             text=True, timeout=900, cwd=ws, env=env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        prefect_ui = api.removesuffix("/api")
        c = MlflowClient(mlflow_ui)
        exp = c.get_experiment_by_name("gptops")
        parent = c.search_runs([exp.experiment_id], "tags.`gptops.run` = 'pipeline'",
                               order_by=["attributes.start_time DESC"], max_results=1)[0]
        flow_run_id = parent.data.tags["prefect_flow_run_id"]
        page = f"{prefect_ui}/runs/flow-run/{flow_run_id}"
        assert page in out.stdout  # "Where to look" names the same page
        assert parent.data.tags["prefect_flow_run_url"] == page and _served(page, "")
        assert f"]({page})" in parent.data.tags["mlflow.note.content"]
        versions = c.search_model_versions("name='gptops-package-clf'")
        new = max(versions, key=lambda v: int(v.version))
        assert new.tags["prefect_flow_run_url"] == page and f"]({page})" in new.description
        finetune = c.get_run(new.run_id).data.tags
        assert finetune["prefect_flow_run_url"] == page
        assert f"]({page})" in finetune["mlflow.note.content"]

        arts = _artifacts(api, flow_run_id)
        run_page = f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
        assert arts["mlflow-pipeline-run"].data.count(run_page) == 1
        version_page = f"{mlflow_ui}/#/models/gptops-package-clf/versions/{new.version}"
        assert version_page in arts["mlflow-task-model"].data
        assert run_page in arts["pipeline-summary"].data
        assert version_page in arts["pipeline-summary"].data and page in arts[
            "pipeline-summary"].data
        # the pages exist in the UIs that serve them: the run and version in that MLflow
        assert _served(mlflow_ui, f"/api/2.0/mlflow/runs/get?run_id={parent.info.run_id}")
        assert _served(mlflow_ui, "/api/2.0/mlflow/model-versions/get?name=gptops-package-clf"
                                  f"&version={new.version}")
        assert float(arts["finetune-progress"].data) == 100.0
        assert "pretrain-progress" not in arts  # reused: nothing trained, no progress
        rows = {r["metric"]: r for r in json.loads(arts["task-evaluation"].data)}
        assert rows["macro_f1"]["champion"] is not None  # compared with the champion
    finally:
        stop_serve(proc)
