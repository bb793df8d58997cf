"""The workspace's Prefect server: one run history per workspace.

``gptops run`` and ``gptops serve`` record their flow runs in the same database,
``<workspace>/.gptops/prefect.db``, unless ``PREFECT_API_URL`` names a server (a team server), in
which case both use that server. ``gptops serve`` leaves its address in ``.gptops/serve.json``
while it runs, and ``gptops run`` then talks to it instead of opening the database a second time.
Otherwise ``gptops run`` starts the server itself for the length of the run, in its own process
group (stopped on exit, and on Linux killed with its parent). Its first start on a new machine
migrates a new database, which may take longer than Prefect's 20 s ephemeral timeout on a busy
machine, so the wait here is long (``GPTOPS_PREFECT_STARTUP_TIMEOUT``, default 300 s) and says
what it is waiting for.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from gpt import stopping
from gpt.errors import GptopsError

log = logging.getLogger("gpt.prefect")

SERVE_FILE = "serve.json"
STARTUP_TIMEOUT_ENV = "GPTOPS_PREFECT_STARTUP_TIMEOUT"
#: Seconds the server gets to stop after a deliberate stop of the run, before it is killed.
STOP_GRACE_S = 1.0


def state_dir(workdir: Path) -> Path:
    path = Path(workdir).resolve() / ".gptops"
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url(workdir: Path) -> str:
    """The workspace's Prefect database (SQLite under ``.gptops/``)."""
    return f"sqlite+aiosqlite:///{state_dir(workdir) / 'prefect.db'}"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def healthy(api: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api.rstrip('/')}/health", timeout=timeout) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise GptopsError(f"{what} exited with status {proc.returncode} while starting; "
                              "see the log above")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - local URL
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise GptopsError(f"{what} did not answer at {url} within {timeout:.0f}s")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM ``proc``'s process group; SIGKILL whatever is left of it after ``timeout``."""
    pgid = proc.pid  # started with start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline and (proc.poll() is None or _group_alive(pgid)):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def _die_with_parent() -> None:
    """In the child before exec: own session, and SIGTERM when the parent dies (Linux)."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def prefect_env(host: str, port: int, db_url: str, home: Path) -> dict[str, str]:
    """Environment for a Prefect server and its clients on ``host:port``."""
    env = dict(os.environ)
    api = f"http://{host}:{port}/api"
    env.update({"PREFECT_API_URL": api, "PREFECT_UI_API_URL": api,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port),
                "PREFECT_API_DATABASE_CONNECTION_URL": db_url,
                "PREFECT_LOGGING_EXTRA_LOGGERS": "gpt"})
    env.setdefault("PREFECT_HOME", str(home))
    # SQLite on a busy small machine: give queries and connections more time than Prefect's
    # 10 s / 5 s before a UI action (Run -> Submit) fails with a server error.
    env.setdefault("PREFECT_API_DATABASE_TIMEOUT", "30")
    env.setdefault("PREFECT_API_DATABASE_CONNECTION_TIMEOUT", "15")
    return env


def write_serve_file(workdir: Path, api: str) -> Path:
    path = state_dir(workdir) / SERVE_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"api": api, "pid": os.getpid()}), encoding="utf-8")
    tmp.replace(path)
    return path


def served_api(workdir: Path) -> str | None:
    """The API of a live ``gptops serve`` on this workspace, or None."""
    path = Path(workdir).resolve() / ".gptops" / SERVE_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info["api"] if healthy(info["api"]) else None


def startup_timeout() -> float:
    raw = os.environ.get(STARTUP_TIMEOUT_ENV, "300")
    try:
        return float(raw)
    except ValueError as exc:
        raise GptopsError(f"{STARTUP_TIMEOUT_ENV}={raw!r} is not a number of seconds") from exc


@contextlib.contextmanager
def workspace_api(workdir: Path) -> Iterator[str]:
    """Point this process's Prefect client at the workspace's run history; yield the API URL.

    Must run before ``prefect`` is imported (Prefect reads its settings at import).
    """
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    ws = Path(workdir).resolve()
    state = state_dir(ws)
    api = served_api(ws)
    if api:
        log.info("using the Prefect server of `gptops serve` on this workspace: %s", api)
        os.environ.update(prefect_env("127.0.0.1", int(api.rsplit(":", 1)[1].split("/")[0]),
                                      database_url(ws), state / "prefect-home"))
        yield api
        return
    port = free_port()
    env = prefect_env("127.0.0.1", port, database_url(ws), state / "prefect-home")
    # The server lives as long as the run; its runs are seen later in `gptops serve`'s UI.
    env.setdefault("PREFECT_UI_URL", "http://127.0.0.1:4200")
    first = not (state / "prefect.db").exists()
    log.info("starting the workspace's Prefect server%s",
             " (first start: creating its database, ~30 s)" if first else "")
    # The run-only server needs no scheduler (no deployments run from it) and no UI.
    cmd = [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
           "127.0.0.1", "--port", str(port), "--no-ui", "--no-scheduler", "--no-late-runs",
           "--analytics-off"]
    server_log = state / "prefect-server.log"
    with server_log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=ws, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # noqa: PLW1509
    try:
        api = env["PREFECT_API_URL"]
        try:
            wait_http(f"{api}/health", proc, "the workspace's Prefect server",
                      timeout=startup_timeout())
        except GptopsError as exc:
            raise GptopsError(f"{exc} (its log: {server_log}; on a very busy machine raise "
                              f"{STARTUP_TIMEOUT_ENV})") from None
        os.environ.update(env)
        yield api
    finally:
        _drain_prefect_workers()  # the run's last log lines and events reach the server first
        # Its graceful shutdown takes ~5 s; a run stopped by SIGTERM/Ctrl-C must end sooner,
        # and has written all it writes (SQLite keeps the database whole if the server is killed).
        stop_group(proc, timeout=STOP_GRACE_S if stopping.stopped() else 20.0)


def _drain_prefect_workers() -> None:
    """Send what Prefect's background workers still hold (logs, events) while the server is up;
    otherwise they retry against a stopped server at exit."""
    if "prefect" not in sys.modules:
        return
    with contextlib.suppress(Exception):
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=30)
    with contextlib.suppress(Exception):
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=30)
