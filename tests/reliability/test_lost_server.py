"""Issue 23, item 3: the run's own Prefect server killed mid-training.

Before, training, evaluation and registration went on, then the process retried events and lease
renewals for minutes, ignored SIGTERM for 15 s+, and left the flow run RUNNING and the workspace's
slot taken. Now the run says so in one line within seconds, starts the server again on the same
port and database, and ends normally with its history kept; the next `gptops run` works.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT, RUN_OVERRIDES, migrated_prefect_db
from tests.reliability.test_server_lifetime import _server_of

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.serial,
              pytest.mark.timeout(600)]
#: Tiny training (30 steps) that still writes a checkpoint (at step 15) to resume from; no
#: built-in benchmarks (evaluation still runs, after the server is back).
QUICK = [*RUN_OVERRIDES, "finetune.max_steps=10", "sft.enabled=false",
         "evaluate.builtin_benchmarks=false"]


def test_a_killed_prefect_server_mid_run(tmp_path, data_ready):
    ws = data_ready(tmp_path / "ws")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "GPTOPS_PROGRESS": "plain",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    sets = [a for o in QUICK for a in ("--set", o)]
    cmd = [sys.executable, "-m", "flows.cli", "run", "-w", str(ws), *sets]
    log = tmp_path / "run.log"
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        server, _port = _server_of(proc)
        ckpts = ws / ".gptops" / "runs" / "pretrain"
        deadline = time.time() + 300
        while not list(ckpts.glob("*/checkpoints/ckpt-*")):
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.3)
        os.killpg(server.pid, signal.SIGKILL)  # its own process group: the server and its workers
        t0 = time.time()
        while "Prefect server (pid" not in log.read_text():
            assert time.time() - t0 < 30, f"no word of the lost server in 30 s:\n{log.read_text()}"
            time.sleep(0.3)
        print(f"lost server reported {time.time() - t0:.1f}s after the kill")
        proc.wait(timeout=360)  # before: minutes of retries, then RUNNING for good
        out = log.read_text()
        assert proc.returncode == 0, out
        print(f"the run ended {time.time() - t0:.0f}s after the kill")
        assert "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    db = sqlite3.connect(ws / ".gptops" / "prefect.db")
    states = [s for (s,) in db.execute("SELECT state_type FROM flow_run")]
    assert states == ["COMPLETED"], states  # recorded on the server started again
    db.close()

    # The next command a user types.
    t1 = time.time()
    nxt = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert "pretrain: reused" in nxt.stdout + nxt.stderr
    print(f"the next run took {time.time() - t1:.0f}s")


def test_a_killed_team_server_mid_run(tmp_path, data_ready):
    """A server the run does not own (PREFECT_API_URL; `gptops serve`'s alike) SIGKILLed
    mid-training: one line within 30 s; SIGTERM then ends the process within 10 s, without a
    line per event or traceback the server did not get (before: 30 s+ of retrying events to the
    dead server, then 15 s); with the server back, the next run marks the killed one Crashed and
    finishes."""
    from tests.serving import free_port

    ws = data_ready(tmp_path / "ws")
    home, port = tmp_path / "prefect-home", free_port()
    home.mkdir()
    shutil.copyfile(migrated_prefect_db(), home / "team.db")  # a team server's: not new
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "GPTOPS_PROGRESS": "plain",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home),
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/team.db"})

    def team_server() -> subprocess.Popen:
        from flows.server import wait_http

        srv = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "prefect"),
                                "server", "start", "--host", "127.0.0.1", "--port", str(port),
                                "--no-ui", "--analytics-off"], env=env, start_new_session=True,
                               stdout=(tmp_path / "server.log").open("a"),
                               stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{port}/api/health", srv, "the team server", 240)
        return srv

    env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    sets = [a for o in QUICK for a in ("--set", o)]
    cmd = [sys.executable, "-m", "flows.cli", "run", "-w", str(ws), *sets]
    log = tmp_path / "run.log"
    srv = team_server()
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    try:
        ckpts = ws / ".gptops" / "runs" / "pretrain"
        deadline = time.time() + 300
        while not list(ckpts.glob("*/checkpoints/ckpt-*")):
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.3)
        os.killpg(srv.pid, signal.SIGKILL)
        srv.wait()
        t0 = time.time()
        while "does not answer" not in log.read_text():
            assert time.time() - t0 < 30, f"no word of the lost server in 30 s:\n{log.read_text()}"
            time.sleep(0.3)
        print(f"lost server reported {time.time() - t0:.1f}s after the kill")
        t1 = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)  # before: retries for minutes
        print(f"SIGTERM: exit {proc.returncode} after {time.time() - t1:.1f}s")
        assert proc.returncode == 143, log.read_text()
        # Before: 15 s, the last event in flight (ten connection attempts to the lost server).
        assert time.time() - t1 < 10, log.read_text()
        after = log.read_text().split("does not answer", 1)[1]
        for noise in ("failed to process item", "Unable to connect", "Traceback"):
            assert noise not in after, after
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if srv.poll() is None:
            os.killpg(srv.pid, signal.SIGKILL)
    srv = team_server()  # the next command a user types, once the server is back
    try:
        nxt = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=420)
        out = nxt.stdout + nxt.stderr
        assert nxt.returncode == 0, out
        assert "as Crashed" in out, out
        # the killed run's training goes on: resumed from its checkpoint or, where it ended
        # before the SIGTERM (a fast machine), reused as finished
        assert "resumed from ckpt-" in out or "pretrain: reused (key" in out, out
    finally:
        os.killpg(srv.pid, signal.SIGKILL)
