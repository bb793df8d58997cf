"""Start and stop `gptops serve` for tests (shared by the serve, browser and PostgreSQL tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

GPTOPS = str(Path(sys.executable).parent / "gptops")
CRON, TZ = "30 3 * * *", "Europe/Berlin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(ws: Path, log: Path, cron: str = CRON, tz: str = TZ,
                timeout: float = 150.0, extra: tuple[str, ...] = ()
                ) -> tuple[subprocess.Popen, str, str]:
    """Start ``gptops serve`` (with ``extra`` options) and wait for its "Press Ctrl-C" line;
    returns (proc, api, mlflow)."""
    pp, mp = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update({"HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"})
    out = log.open("w")
    proc = subprocess.Popen([GPTOPS, "serve", "--workdir", str(ws), "--prefect-port", str(pp),
                             "--mlflow-port", str(mp), "--cron", cron, "--timezone", tz, *extra],
                            stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    out.close()
    deadline = time.time() + timeout
    while "Press Ctrl-C to stop." not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            servers = "".join(f"\n--- {f.name}:\n{f.read_text(errors='replace')[-2000:]}"
                              for f in sorted((ws / ".gptops" / "logs").glob("*.log")))
            pytest.fail(f"gptops serve did not come up:\n{log.read_text()[-4000:]}{servers}")
        time.sleep(0.5)
    return proc, f"http://127.0.0.1:{pp}/api", f"http://127.0.0.1:{mp}"


def stop_serve(proc: subprocess.Popen, timeout: float = 90.0) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


