"""Who writes a workspace: its lock (one pipeline or writing command at a time) and the
records of its live runs.

Both are ``flock`` locks, released by the kernel when their process dies, so a killed run never
leaves the workspace locked nor looks alive (:attr:`gpt.layout.Workspace.lock_file`,
:attr:`gpt.layout.Workspace.live_runs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from gpt.errors import ConfigError, GptopsError
from gpt.layout import Workspace

log = logging.getLogger(__name__)

#: Seconds between two "waiting for workspace" lines (a waiting run never waits silently).
WAIT_LOG_ENV = "GPTOPS_WAIT_LOG_S"


def wait_log_period() -> float:
    """``GPTOPS_WAIT_LOG_S`` (30 s when unset): how often a waiting run says whom it waits for."""
    raw = os.environ.get(WAIT_LOG_ENV, "30")
    try:
        return max(float(raw), 0.1)
    except ValueError as exc:
        raise ConfigError(f"{WAIT_LOG_ENV}={raw!r} is not a number of seconds") from exc


def _holder_line(holder: str) -> str:
    """``holder (pid N on HOST, since TIME)``: who holds a lock, for the one waiting on it."""
    import socket
    import time

    return (f"{holder} (pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')})")


#: Set while a process holds a workspace (``<folder>|<pid>``): its children (the data stages
#: DVC runs for it) write the workspace on its behalf and do not wait for it.
HELD_ENV = "GPTOPS_WORKSPACE_HELD"


def _held_by_ancestor(ws: Path) -> bool:
    """Whether this process or one of its ancestors holds workspace ``ws`` (:data:`HELD_ENV`)."""
    import psutil

    folder, _, pid = os.environ.get(HELD_ENV, "").rpartition("|")
    if folder != str(ws) or not pid.isdigit():
        return False
    try:
        lineage = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    except psutil.Error:
        return False
    return int(pid) in lineage


@contextlib.contextmanager
def workspace_lock(workdir: Path, holder: str, wait: bool = True,
                   poll_s: float = 1.0) -> Any:
    """Hold the workspace for one pipeline run (or one command that writes it) at a time.

    An exclusive ``flock`` on ``.gptops/workspace.lock``, released by the kernel when the holder
    dies (a killed run never leaves it locked). The holder writes who it is into the file, so a
    second run says whom it waits for (again every ``GPTOPS_WAIT_LOG_S``), or with
    ``wait=False`` fails at once naming it. A process started by the holder (a data stage that
    DVC runs for ``gptops run``) works under the holder's lock (:data:`HELD_ENV`).

    Raises:
        GptopsError: ``wait`` is False and another process holds the workspace.
    """
    import fcntl
    import time

    ws = Path(workdir).resolve()
    if _held_by_ancestor(ws):
        yield
        return
    path = Workspace(ws).lock_file
    path.parent.mkdir(parents=True, exist_ok=True)
    period = wait_log_period()
    with open(path, "a+") as fh:
        since, told = time.strftime("%Y-%m-%d %H:%M:%S"), 0.0
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fh.seek(0)
                other = fh.read().strip() or "another process"
                if not wait:
                    raise GptopsError(f"workspace {ws} is busy: {other}; wait for it to finish "
                                      "(or run without --no-wait to queue)") from None
                if time.monotonic() - told >= period:
                    log.info("waiting for workspace %s: held by %s; waiting since %s",
                             ws, other, since)
                    told = time.monotonic()
                time.sleep(min(poll_s, period))
        fh.seek(0)
        fh.truncate()
        fh.write(_holder_line(holder) + "\n")
        fh.flush()
        before = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = f"{ws}|{os.getpid()}"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = before
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)





def _start_time() -> str:
    """This process's start time in clock ticks since boot (``/proc``), or ``unknown``."""
    try:
        stat = Path("/proc/self/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "unknown"


@contextlib.contextmanager
def live_run(workdir: Path, run_id: str, holder: str) -> Any:
    """Record run ``run_id`` as alive in this process for the length of the block.

    ``.gptops/live-runs/<run_id>.lock`` holds who it is (pid, host, process start time) and is
    locked by this process; :func:`run_alive` tells from the lock whether its process lives.
    """
    import fcntl

    folder = Workspace(Path(workdir).resolve()).live_runs
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id}.lock"
    tmp = folder / f".{run_id}.{os.getpid()}.tmp"
    # Locked before it gets its name: whoever opens the name finds it locked.
    fh = open(tmp, "w")  # noqa: SIM115 - closed below; the lock lives as long as the file is open
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(f"{_holder_line(holder)} process start {_start_time()}\n")
        fh.flush()
        os.replace(tmp, path)
        yield path
    finally:
        # The record stays, unlocked: a run that ends while its Prefect server is down leaves
        # its flow run RUNNING, and the next run must find it dead (sweep_live_runs removes it).
        tmp.unlink(missing_ok=True)
        fh.close()


def sweep_live_runs(workdir: Path) -> int:
    """Remove the live-run records whose process has ended; return how many."""
    folder = Workspace(Path(workdir).resolve()).live_runs
    ids = [p.stem for p in folder.glob("*.lock")] if folder.is_dir() else []
    return sum(run_alive(workdir, run_id) is False for run_id in ids)


def run_alive(workdir: Path, run_id: str) -> bool | None:
    """Whether the process of run ``run_id`` (see :func:`live_run`) is alive.

    True: its record is locked (its process lives); False: the record is there and unlocked
    (its process ended; the record is removed); None: no record.
    """
    import fcntl

    path = Workspace(Path(workdir).resolve()).live_run(run_id)
    try:
        fh = open(path)  # noqa: SIM115
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        path.unlink(missing_ok=True)
        return False
