"""`gptops doctor` tells what a user needs to know: dvc.lock against git, Chromium, no wraps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT, make_workspace


def doctor(ws: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "flows.cli", "doctor", "-w", str(ws)], cwd=ws,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "COLUMNS": "60"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_doctor_compares_dvc_lock_with_git(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    assert "dvc.lock: missing" in doctor(ws)
    (ws / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "-A"], cwd=ws, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "data"], cwd=ws, check=True, capture_output=True)
    assert "dvc.lock: ok (committed)" in doctor(ws)
    (ws / "dvc.lock").write_text("schema: '2.0'\nstages: {ingest: {}}\n")
    out = doctor(ws)
    assert "dvc.lock: changed since the last git commit" in out
    # the versions line is one line even in a narrow terminal (the terminal wraps it, not us)
    assert any(line.startswith("gptops ") and "dvc " in line for line in out.splitlines())
    assert "chromium: " in out
