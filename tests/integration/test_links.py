"""Links a run prints work: the live `gptops serve`'s own addresses when one runs on the
workspace (whatever its ports), else the command that opens the UIs on this run's history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
