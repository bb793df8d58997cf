"""Scenario 3 (orphaned server): ``gptops run`` starts the workspace's Prefect server for the
length of the run. Killed with SIGKILL, or stopped with SIGTERM, it must not leave that server
running as an orphan: the server is in its own process group, stopped on exit, and on Linux gets
a parent-death signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import DATA_OVERRIDES, PROJECT_ROOT, RUN_OVERRIDES, make_workspace

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _server_of(proc: subprocess.Popen, timeout: float = 180.0):
    """The `prefect server start` child of ``proc``, once it answers; and its port."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else proc.returncode
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                cmd = child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if "server" in cmd and "start" in cmd and "--port" in cmd:
                port = cmd[cmd.index("--port") + 1]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health",
                                                timeout=2) as r:
                        if r.status == 200:
                            return child, port
                except OSError:
                    pass
        time.sleep(0.3)
    pytest.fail("the workspace's Prefect server did not come up")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_runs_prefect_server_dies_with_it(tmp_path, sig):
    import psutil

    ws = make_workspace(tmp_path / "ws", DATA_OVERRIDES)
    # Not the session's server: `gptops run` starts the workspace's own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "GPTOPS_PROGRESS": "plain",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    sets = [a for o in RUN_OVERRIDES for a in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "-w", str(ws), *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    server = None
    try:
        server, port = _server_of(proc)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        t0 = time.time()
        try:
            server.wait(timeout=10)
        except psutil.TimeoutExpired:
            pytest.fail(f"the Prefect server (pid {server.pid}, port {port}) outlived "
                        f"`gptops run` killed by {sig.name} by 10 s")
        print(f"{sig.name}: server gone {time.time() - t0:.1f}s after `gptops run` exited")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server is not None and server.is_running():
            os.killpg(server.pid, signal.SIGKILL)
