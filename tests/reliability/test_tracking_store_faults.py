"""Issue 23 item 7: a locked or corrupt ``mlflow.db``, a web server that is not MLflow.

Before: a locked store gave a SQLAlchemy traceback after 11 s (16 s for ``gptops models``); a
corrupt one "file is not a database" tracebacks after the data stages ran; an HTTP server that is
not MLflow passed preflight and failed after 44 s with a 182-line traceback. Now each is one line
from preflight (exit 2) before any data stage; a lock is waited for with a message, and the
command goes on once it goes. After the fault is removed the next command works.
(``file://`` URIs: ``test_tracking_uris.py``.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]


def _gptops(*args: str, cwd: Path, **env: str) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                       text=True, timeout=120, cwd=cwd,
                       env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HOME": str(cwd),
                            "PREFECT_HOME": str(cwd / ".prefect"), "COLUMNS": "250", **env})
    return r.returncode, (r.stdout + r.stderr).strip(), time.perf_counter() - t0


def _one_line_error(rc: int, out: str) -> str:
    assert rc == 2, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


def _no_data_stage_ran(ws: Path) -> None:
    assert not (ws / "data").exists() and not (ws / "dvc.yaml").exists(), sorted(ws.iterdir())


@pytest.fixture(scope="module")
def real_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables (made by MLflow itself), copied into each test.

    (`gptops models` no longer makes one: it reads a missing store as an empty registry.)
    """
    from gpt.registry import client

    home = tmp_path_factory.mktemp("store")
    db = home / "mlflow.db"
    client(f"sqlite:///{db}").search_registered_models()
    assert db.is_file()
    return db


@pytest.fixture()
def ws(tmp_path, real_db) -> Path:
    """A workspace not run yet (params.yaml only) whose .gptops/mlflow.db is a used store."""
    from gpt.config import PROJECT_PARAMS

    path = tmp_path / "ws"
    (path / ".gptops").mkdir(parents=True)
    shutil.copy2(PROJECT_PARAMS, path / "params.yaml")
    shutil.copy2(real_db, path / ".gptops" / "mlflow.db")
    return path


HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")  # a write transaction, as a busy writer holds it
conn.execute("CREATE TABLE IF NOT EXISTS holder_was_here (x)")
print("held", flush=True)
time.sleep(600)
"""


def _hold_lock(db: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_locked_store_waits_then_fails_in_one_line_and_works_once_free(ws):
    db = ws / ".gptops" / "mlflow.db"
    holder = _hold_lock(db)
    try:
        rc, out, elapsed = _gptops("run", "-w", str(ws), cwd=ws.parent,
                                   GPTOPS_DB_LOCK_WAIT_S="4")
        assert rc == 2 and "Traceback" not in out, out
        waits = [x for x in out.splitlines() if f"waiting for the MLflow database {db}: "
                 "another process holds a write lock on it" in x]
        (error,) = [x for x in out.splitlines() if x.startswith("error: ")]
        assert len(waits) == 1 and len(out.splitlines()) == 2, out  # a message, then one line
        assert f"{db} is locked by another process" in error, out
        assert f"fuser {db}" in error, out
        assert 4 <= elapsed < 30, elapsed
        _no_data_stage_ran(ws)

        # The lock goes while the next command waits: it goes on, no step by hand.
        threading.Timer(3.0, holder.send_signal, (signal.SIGKILL,)).start()
        rc, out, elapsed = _gptops("models", "-w", str(ws), cwd=ws.parent)
        assert rc == 0, out
        assert "waiting for the MLflow database" in out and "is free again" in out, out
        assert "registered models at" in out, out
        assert elapsed < 60, elapsed
    finally:
        holder.kill()
        holder.wait()


def test_a_corrupt_store_fails_in_one_line_before_the_data_stages(ws):
    db = ws / ".gptops" / "mlflow.db"
    size = db.stat().st_size
    db.write_bytes(os.urandom(size))  # garbage over the whole store
    before = db.read_bytes()
    rc, out, elapsed = _gptops("run", "-w", str(ws), cwd=ws.parent)
    line = _one_line_error(rc, out)
    assert f"{db} is not an SQLite database (file is not a database)" in line, line
    assert f"mv {db} {db}.bad" in line, line
    assert elapsed < 20, elapsed
    _no_data_stage_ran(ws)
    assert db.read_bytes() == before  # the check never writes the store

    # The fix the line gives: move it aside; the next command starts a new store.
    db.rename(Path(f"{db}.bad"))
    rc, out, elapsed = _gptops("models", "-w", str(ws), cwd=ws.parent)
    assert rc == 0 and "registered models at" in out, out
    assert elapsed < 60, elapsed


def test_a_damaged_store_with_an_intact_header_fails_in_one_line(ws):
    db = ws / ".gptops" / "mlflow.db"
    data = bytearray(db.read_bytes())
    data[100:] = os.urandom(len(data) - 100)  # SQLite's header kept, every page garbage
    db.write_bytes(bytes(data))
    rc, out, elapsed = _gptops("models", "--tracking-uri", f"sqlite:///{db}", cwd=ws.parent)
    line = _one_line_error(rc, out)
    assert f"{db} cannot be read as an SQLite database" in line, line
    assert elapsed < 20, elapsed


class _NotMlflow(BaseHTTPRequestHandler):
    """A web server that answers every request 200 with a page (a proxy's, a wiki's ...)."""

    def _page(self) -> None:
        body = b"<html><body>It works!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _page  # noqa: N815 - http.server's names

    def log_message(self, *args) -> None:
        pass


def test_a_web_server_that_is_not_mlflow_fails_in_one_line(ws):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for args in (["run", "-w", str(ws), "--set", f"registry.tracking_uri={uri}"],
                     ["models", "--tracking-uri", uri]):
            rc, out, elapsed = _gptops(*args, cwd=ws.parent)
            line = _one_line_error(rc, out)
            assert "does not answer as an MLflow tracking server" in line, line
            assert "text/html" in line, line
            assert elapsed < 20, elapsed
        _no_data_stage_ran(ws)
    finally:
        server.shutdown()
        server.server_close()
    # The URI dropped (the workspace's own store again): the next command works.
    rc, out, _ = _gptops("models", "-w", str(ws), cwd=ws.parent)
    assert rc == 0 and "registered models at" in out, out
