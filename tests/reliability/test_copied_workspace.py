"""Issue 23 item 5: a copied or moved workspace reads and writes only itself.

Before: ``cp -a ws2 ws3; gptops run -w ws3 ...`` wrote the new classifier version into
``ws2/.gptops/mlartifacts``, and ``gptops generate -w ws3`` loaded ws2's files: MLflow keeps
absolute artifact locations in the SQLite store. After ``mv`` the models could not be loaded at
all. Now the first command in the copy repoints the copy's own store at the copy, says so once,
and the original stays byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, RUN_OVERRIDES

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

MOVED = "this workspace was copied or moved from"


def _gptops(*args: str, cwd: Path) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                       text=True, timeout=900, cwd=cwd,
                       env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HOME": str(cwd),
                            "PREFECT_HOME": str(cwd / ".prefect"), "COLUMNS": "250",
                            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"})
    return r.returncode, (r.stdout + r.stderr).strip(), time.perf_counter() - t0


def _digests(root: Path) -> dict[str, str]:
    """Every file under ``root`` (workspace.lock too) by content."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _texts(db: Path) -> list[str]:
    """Every text value in an SQLite store (to look for paths in it)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = []
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                out += [v for v in row if isinstance(v, str)]
        return out
    finally:
        conn.close()


@pytest.mark.timeout(1500)
def test_a_copied_then_moved_workspace_reads_and_writes_only_itself(pipeline_run, tmp_path):
    from gpt import registry

    ws, first, _ = pipeline_run
    before = _digests(ws)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(ws), str(copy)], check=True)
    sets = [a for o in RUN_OVERRIDES for a in ("--set", o)]
    # A changed fine-tuning: a new classifier version is registered, in the copy.
    rc, out, elapsed = _gptops("run", "-w", str(copy), *sets, "--set", "finetune.lr=0.002",
                               cwd=tmp_path)
    assert rc == 0, out[-3000:]
    assert out.count(MOVED) == 1 and f"from {ws}:" in out, out[-3000:]

    db = copy / ".gptops" / "mlflow.db"
    uri = f"sqlite:///{db}"
    task = first["registered"]["task"]["name"]
    client = registry.client(uri)
    versions = client.search_model_versions(f"name='{task}'")
    assert len(versions) == 2, [v.version for v in versions]
    texts = _texts(db)
    assert not [t for t in texts if f"{ws}/" in t or t.endswith(f":{ws}")], "old paths left"
    assert any(str(copy / ".gptops" / "mlartifacts") in t for t in texts)
    for v in versions:  # the new version's files and the copied one's, both in the copy
        where = client.get_model_version_download_uri(task, v.version)
        assert where.startswith(f"file://{copy}/.gptops/mlartifacts/"), where

    for args in (["generate", "def", "-n", "4"], ["predict", "Return a new list."],
                 ["models"]):
        rc, out, _ = _gptops(*args, "-w", str(copy), cwd=tmp_path)
        assert rc == 0 and MOVED not in out, out[-3000:]  # said once, at the first command
    assert _digests(ws) == before, "the original workspace was written"

    moved = tmp_path / "moved"
    copy.rename(moved)
    rc, out, _ = _gptops("predict", "Return a new list.", "-w", str(moved), cwd=tmp_path)
    assert rc == 0, out[-3000:]
    assert out.count(MOVED) == 1 and f"from {copy}:" in out, out
    rc, out, _ = _gptops("generate", "def", "-n", "4", "-w", str(moved), cwd=tmp_path)
    assert rc == 0 and MOVED not in out, out[-3000:]
    assert not [t for t in _texts(moved / ".gptops" / "mlflow.db") if f"{copy}/" in t]
    assert not copy.exists()  # nothing was written back at the old place
    assert _digests(ws) == before
