"""Issue 23, items 10 and 11: commands that write the workspace.

10. ``gptops data clean|ingest|tokenize`` took no workspace lock: next to a running ``gptops
    run``, ``data clean`` rewrote ``data/clean`` under it. Now every command that writes the
    workspace holds its lock (``--no-wait`` fails at once naming the holder, like ``gptops run``);
    the stages DVC runs for a pipeline work under the pipeline's lock.
11. A read-only workspace: ``gptops run`` gave an ``OSError`` traceback on
    ``prefect-server.log``. Now one line naming the folder and the fix, exit 2, before anything
    starts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DATA_OVERRIDES, PROJECT_ROOT, RUN_OVERRIDES, make_workspace

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "GPTOPS_PROGRESS": "plain",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    return env


def _gptops(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(), **kwargs)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.timeout(600)
def test_a_data_command_waits_for_the_command_that_holds_the_workspace(pipeline_run, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(pipeline_run[0], ws, symlinks=True)
    lock = ws / ".gptops" / "workspace.lock"
    sets = [a for o in [*RUN_OVERRIDES, "train.max_steps=100000", "train.eval_interval=100000",
                        "train.checkpoints=1"] for a in ("--set", o)]
    holder = _gptops("pretrain", "-w", str(ws), *sets)
    try:
        deadline = time.time() + 180
        while "gptops pretrain" not in (lock.read_text() if lock.exists() else ""):
            assert holder.poll() is None, holder.stdout.read()
            assert time.time() < deadline, "gptops pretrain never took the workspace"
            time.sleep(0.2)
        before = _snapshot(ws / "data" / "clean")

        # --no-wait: one line naming the holder, at once, nothing written.
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "flows.cli", "data", "clean", "-w", str(ws),
                              "--no-wait"], capture_output=True, text=True, env=_env(),
                             timeout=120)
        assert out.returncode == 2, out.stdout + out.stderr
        (line,) = [ln for ln in out.stdout.splitlines() if "busy" in ln]
        assert f"pid {holder.pid}" in line and "gptops pretrain" in line, line
        assert "Traceback" not in out.stdout + out.stderr
        print(f"--no-wait: exit 2 in {time.monotonic() - t0:.1f}s")

        # Without --no-wait it waits, says for whom, and writes nothing until the holder ends.
        waiter = _gptops("data", "clean", "-w", str(ws))
        time.sleep(8)
        assert waiter.poll() is None, waiter.stdout.read()
        assert _snapshot(ws / "data" / "clean") == before  # not rewritten under the holder
        holder.send_signal(signal.SIGTERM)  # the holder stops (checkpoint saved), lock released
        assert holder.wait(timeout=60) == 143
        out_w, _ = waiter.communicate(timeout=300)
        assert waiter.returncode == 0, out_w
        assert "waiting for workspace" in out_w and "gptops pretrain" in out_w, out_w
    finally:
        for proc in (holder, locals().get("waiter")):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture()
def read_only():
    """Make a folder read-only for real: permission bits as a user, a read-only bind mount as
    root (root writes through permission bits)."""
    mounted: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)
            return
        for cmd in (["mount", "--bind", str(path), str(path)],
                    ["mount", "-o", "remount,bind,ro", str(path)]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                if mounted:
                    subprocess.run(["umount", str(path)], check=False)
                pytest.skip(f"running as root, and a read-only bind mount fails here "
                            f"({' '.join(cmd)}: {r.stderr.strip()}); permission bits do not "
                            "stop root")
            if cmd[1] == "--bind":
                mounted.append(path)
        probe = path / ".write-probe"
        with pytest.raises(OSError):
            probe.write_text("x")

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.timeout(120)
def test_a_read_only_workspace_is_refused_in_one_line(tmp_path, read_only):
    ws = make_workspace(tmp_path / "ws", DATA_OVERRIDES)
    read_only(ws)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", "-w", str(ws)],
                         capture_output=True, text=True, env=_env(), timeout=90)
    took = time.monotonic() - t0
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text and "prefect" not in text.lower(), text
    (line,) = [ln for ln in text.splitlines() if ln.strip()]
    assert f"workspace {ws} cannot be written" in line, line
    assert "Read-only file system" in line or "Permission denied" in line, line
    assert "writable" in line
    print(f"read-only workspace: exit 2 in {took:.1f}s: {line}")
