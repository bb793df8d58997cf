"""The workspace's Prefect server: one run history per workspace.

``gptops run`` and ``gptops serve`` record their flow runs in the same database,
``<workspace>/.gptops/prefect.db``, unless ``PREFECT_API_URL`` names a server (a team server), in
which case both use that server. ``gptops serve`` leaves its address in ``.gptops/serve.json``
while it runs, and ``gptops run`` then talks to it instead of opening the database a second time.
Otherwise ``gptops run`` starts the server itself for the length of the run, in its own process
group (stopped on exit, and on Linux killed with its parent). Its first start on a new machine
migrates a new database, which may take longer than Prefect's 20 s ephemeral timeout on a busy
machine, so the wait here is long (``GPTOPS_PREFECT_STARTUP_TIMEOUT``, default 300 s) and says
what it is waiting for. A new workspace's database starts as a copy of an empty one at the
installed Prefect's schema (:func:`blank_database`, made once per environment: by
``scripts/setup.sh``, else by the first new workspace), so only that first one migrates.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from flows.links import MLFLOW_UI_ENV
from gpt import stopping
from gpt.envshare import scratch_beside, share_dir
from gpt.errors import GptopsError, Interrupted
from gpt.layout import Workspace

log = logging.getLogger("gpt.prefect")

STARTUP_TIMEOUT_ENV = "GPTOPS_PREFECT_STARTUP_TIMEOUT"
#: Seconds the server gets to stop after a deliberate stop of the run, before it is killed.
STOP_GRACE_S = 1.0


def workspace(workdir: Path) -> Workspace:
    """The workspace's layout, its ``.gptops/`` folder made."""
    ws = Workspace(Path(workdir).resolve())
    ws.state.mkdir(parents=True, exist_ok=True)
    return ws


def database_url(workdir: Path) -> str:
    """The workspace's Prefect database (SQLite under ``.gptops/``)."""
    return f"sqlite+aiosqlite:///{workspace(workdir).prefect_db}"


def blank_database() -> Path:
    """Where this environment keeps an empty Prefect database at its Prefect's schema, its block
    types registered (in the interpreter's prefix, named after :func:`_blocks_key`; it may not
    exist yet)."""
    return share_dir() / f"prefect-{_blocks_key()}.db"


@functools.cache
def _blocks_key() -> str:
    """What decides which block types a Prefect server registers: the installed Prefect and
    its collections (``prefect-*`` packages), as ``<prefect version>-<hash of them all>``."""
    from importlib.metadata import distributions, version

    dists = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions()
                   if str(d.metadata["Name"] or "").lower().startswith("prefect"))
    digest = hashlib.sha256("\n".join(dists).encode()).hexdigest()[:12]
    return f"{version('prefect')}-{digest}"


#: In a workspace's Prefect home: the :func:`_blocks_key` its database's block types were
#: registered under. While it holds, its server skips registering them again at every start
#: (Prefect's own record of that names the database's path: a new workspace lacks it, ~3 s).
BLOCKS_MARK = "gptops-blocks"


def skip_known_blocks(env: dict[str, str], home: Path) -> None:
    """Have the server skip block registration when the workspace's database has this
    environment's block types (else it registers them, and :func:`mark_blocks` records it).

    Both settings: with registration off, Prefect's memo of it still imports every installed
    collection (prefect-dask, prefect-kubernetes: ~1.5 s of a ~5 s start) to hash their blocks
    before it looks at the first."""
    with contextlib.suppress(OSError):
        if (home / BLOCKS_MARK).read_text(encoding="utf-8").strip() == _blocks_key():
            env["PREFECT_API_BLOCKS_REGISTER_ON_START"] = "false"
            env["PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION"] = "false"


def _schema_version(db: Path) -> str | None:
    """The Alembic revision a Prefect SQLite database is at (None: unreadable, or none)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True,
                                                timeout=1)) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def skip_known_schema(env: dict[str, str], db: Path) -> None:
    """Have the server skip its migrations when the workspace's database is at the schema of
    this environment's blank one (made by the installed Prefect): Alembic finds nothing to do
    there, after ~0.3 s of imports and checks on every start. Any other database (an older
    Prefect's, a restored backup, none yet) is migrated at start, as Prefect does by default."""
    blank = blank_database()
    head = _schema_version(blank) if blank.is_file() else None
    if head is not None and db.is_file() and _schema_version(db) == head:
        env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"


def mark_blocks(home: Path) -> None:
    with contextlib.suppress(OSError):
        home.mkdir(parents=True, exist_ok=True)
        (home / BLOCKS_MARK).write_text(_blocks_key() + "\n", encoding="utf-8")


def make_blank_database() -> Path | None:
    """Make :func:`blank_database` when it is missing, by starting a Prefect server once on a new
    database (it migrates it and registers the block types) and stopping it; return it, or None
    when it cannot be made (a read-only prefix: each new workspace's server then does that work
    on its first start, as Prefect does by default)."""
    path = blank_database()
    if path.is_file():
        return path
    work = scratch_beside(path, ".prefect-db-")
    if work is None:
        return None
    log.info("preparing an empty Prefect database for new workspaces (once per environment)")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(work / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_API_DATABASE_CONNECTION_URL":
                f"sqlite+aiosqlite:///{work / 'prefect.db'}"})
    try:
        with (work / "server.log").open("wb") as out:
            proc = subprocess.Popen(_server_cmd(port), env=env, cwd=work, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                wait_http(f"http://127.0.0.1:{port}/api/health", proc, "a Prefect server",
                          timeout=startup_timeout())
            finally:
                stop_group(proc)
        # One whole file: what the server left in its write-ahead log goes into the database.
        with contextlib.closing(sqlite3.connect(work / "prefect.db")) as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.execute("PRAGMA journal_mode=DELETE")
        (work / "prefect.db").replace(path)  # atomic: two makers leave one whole file
        return path
    except (OSError, sqlite3.Error, subprocess.SubprocessError, GptopsError) as exc:
        log.warning("could not prepare an empty Prefect database (%s); each new workspace's "
                    "server makes its own", exc)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def new_database(db: Path, home: Path) -> bool:
    """Give a workspace without a Prefect database a copy of the blank one (made first if
    needed), and its Prefect ``home`` the mark that its block types are registered. True when
    ``db`` is still missing: its server then creates and migrates it."""
    if db.exists():
        return False
    blank = make_blank_database()
    if blank is None:
        return True
    for orphan in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        orphan.unlink(missing_ok=True)  # of a deleted database: SQLite would apply it to the copy
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    shutil.copyfile(blank, tmp)
    try:
        tmp.replace(db) if not db.exists() else tmp.unlink()
    except OSError:
        tmp.unlink(missing_ok=True)
    if db.exists():
        mark_blocks(home)
    return not db.exists()


def _server_cmd(port: int) -> list[str]:
    """A run-only Prefect server: no scheduler (no deployments run from it), no UI."""
    return [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
            "127.0.0.1", "--port", str(port), "--no-ui", "--no-scheduler", "--no-late-runs",
            "--analytics-off"]


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
            time.sleep(0.1)
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


def write_serve_file(workdir: Path, api: str, mlflow_ui: str = "") -> Path:
    """Leave the live ``gptops serve``'s addresses for the workspace's other commands."""
    path = workspace(workdir).serve_file
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"api": api, "mlflow_ui": mlflow_ui, "pid": os.getpid()}),
                   encoding="utf-8")
    tmp.replace(path)
    return path


def served(workdir: Path) -> dict[str, str] | None:
    """``{"api", "ui", "mlflow_ui"}`` of a live ``gptops serve`` on this workspace, or None."""
    path = Workspace(Path(workdir).resolve()).serve_file
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    api = str(info.get("api", ""))
    if not api or not healthy(api):
        return None
    return {"api": api, "ui": api.removesuffix("/").removesuffix("/api"),
            "mlflow_ui": str(info.get("mlflow_ui", ""))}


def served_api(workdir: Path) -> str | None:
    """The API of a live ``gptops serve`` on this workspace, or None."""
    info = served(workdir)
    return info["api"] if info else None


def _api_json(url: str, body: dict | None = None, method: str = "POST") -> object:
    req = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310 - the local server
        raw = r.read()
    return json.loads(raw) if raw else None


#: Concurrency limits whose slots a served run takes: a deployment's own and (before issue 23)
#: the workspace's.
_SLOT_PREFIXES = ("deployment:", "gptops-workspace-")


def release_orphan_slots(api: str) -> list[str]:
    """Reset the taken slots of the deployments' concurrency limits on a server that just started.

    Prefect keeps each slot's lease in the memory of the server that granted it: a slot taken
    before that server died (``gptops serve`` killed while a run held it) stays taken for good,
    and every later run of the deployment waits for it. Only for a server this process started
    on the workspace's own database: no lease can exist there yet. Returns the limits reset.
    """
    def call(url: str, body: dict | None = None, method: str = "POST") -> object:
        # A server that just started answers 503 while SQLite is busy with its own services.
        for attempt in range(6):
            try:
                return _api_json(url, body, method)
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt == 5:
                    raise
                time.sleep(1 + attempt)
        return None

    names = []
    try:
        for lim in call(f"{api}/v2/concurrency_limits/filter") or []:  # type: ignore[union-attr]
            if lim.get("active_slots") and str(lim.get("name", "")).startswith(_SLOT_PREFIXES):
                call(f"{api}/v2/concurrency_limits/{lim['id']}", {"active_slots": 0}, "PATCH")
                names.append(lim["name"])
    except (OSError, ValueError) as exc:  # serve goes on; the slots stay as they were
        log.warning("could not release the concurrency slots of runs of a server that died "
                    "(%s); if a deployment's runs stay queued, start gptops serve again", exc)
    return names


def startup_timeout() -> float:
    raw = os.environ.get(STARTUP_TIMEOUT_ENV, "300")
    try:
        return float(raw)
    except ValueError as exc:
        raise GptopsError(f"{STARTUP_TIMEOUT_ENV}={raw!r} is not a number of seconds") from exc


@contextlib.contextmanager
def workspace_api(workdir: Path, meanwhile: Callable[[], object] | None = None
                  ) -> Iterator[str]:
    """Point this process's Prefect client at the workspace's run history; yield the API URL.

    Must run before ``prefect`` is imported (Prefect reads its settings at import).
    ``meanwhile`` (the run's own imports) is called once the client's settings are in place,
    while a server this starts boots in its own process.
    """
    if os.environ.get("PREFECT_API_URL"):
        if meanwhile is not None:
            meanwhile()
        with _watch(os.environ["PREFECT_API_URL"], "the Prefect server (PREFECT_API_URL)"):
            yield os.environ["PREFECT_API_URL"]
        return
    ws = Path(workdir).resolve()
    layout = workspace(ws)
    live = served(ws)
    api = live["api"] if live else None
    if live and api:
        log.info("using the Prefect server of `gptops serve` on this workspace: %s", api)
        if live["mlflow_ui"]:  # the run's summary links to its model versions there
            os.environ.setdefault(MLFLOW_UI_ENV, live["mlflow_ui"])
        os.environ.update(prefect_env("127.0.0.1", int(api.rsplit(":", 1)[1].split("/")[0]),
                                      database_url(ws), layout.prefect_home))
        if meanwhile is not None:
            meanwhile()
        with _watch(api, "the Prefect server of `gptops serve`"):
            yield api
        return
    port = free_port()
    env = prefect_env("127.0.0.1", port, database_url(ws), layout.prefect_home)
    # The server lives as long as the run; its runs are seen later in `gptops serve`'s UI.
    # It has no UI, so Prefect must print no "View at <UI>/runs/..." link (it would be dead):
    # `gptops serve` shows these runs, and the run's summary says how to open it.
    env.setdefault("PREFECT_UI_URL", "")
    cmd = _server_cmd(port)
    server_log = layout.prefect_server_log

    def start(meanwhile: Callable[[], object] | None = None) -> subprocess.Popen:
        # One server starts at a time per workspace: two runs started together would both
        # migrate the database, and one of them fails ("Online migration expected to match").
        with _start_lock(layout.prefect_start_lock), server_log.open("ab") as out:
            home = Path(env["PREFECT_HOME"])
            first = new_database(layout.prefect_db, home)
            skip_known_blocks(env, home)
            skip_known_schema(env, layout.prefect_db)
            log.info("starting the workspace's Prefect server%s",
                     " (first start: creating its database, ~30 s)" if first else "")
            proc = subprocess.Popen(cmd, env=env, cwd=ws, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # noqa: PLW1509
            try:
                if meanwhile is not None:
                    os.environ.update(env)
                    meanwhile()
                wait_http(f"{env['PREFECT_API_URL']}/health", proc,
                          "the workspace's Prefect server", timeout=startup_timeout())
                mark_blocks(home)  # registered at this start, or already
            except GptopsError as exc:
                stop_group(proc)
                raise GptopsError(f"{exc} (its log: {server_log}; on a very busy machine raise "
                                  f"{STARTUP_TIMEOUT_ENV})") from None
            except BaseException:  # a stop (or an import error) while it started
                stop_group(proc, timeout=STOP_GRACE_S)
                raise
        return proc

    current = [start(meanwhile)]
    os.environ.update(env)
    done = threading.Event()
    watchdog = threading.Thread(target=_keep_serving, args=(current, start, done, port),
                                name="gptops-prefect-watchdog", daemon=True)
    watchdog.start()
    try:
        yield env["PREFECT_API_URL"]
    finally:
        _drain_prefect_workers()  # the run's last log lines and events reach the server first
        done.set()
        # Its graceful shutdown takes ~5 s; a run stopped by SIGTERM/Ctrl-C must end sooner,
        # and has written all it writes (SQLite keeps the database whole if the server is killed).
        stop_group(current[0], timeout=STOP_GRACE_S if stopping.stopped() else 20.0)
        watchdog.join(timeout=5)


#: For lines logged outside the flow run (a watchdog thread): the console only, never the API.
_LOCAL = {"send_to_api": False}

#: Seconds between two health checks of a Prefect server this run does not own.
WATCH_PERIOD_S = 5.0


#: While a server is lost: Prefect's logger that complains once per event it did not get, and
#: the flow run's, whose report of the run's end to it fails with a traceback (the concurrency
#: services' complaints follow a setting instead: ``internal.logging_level``).
_COMPLAINERS = ("prefect.events.clients", "prefect.flow_runs")


def _while_lost() -> Callable[[], None]:
    """Settle this process's Prefect client for a server that stopped answering; return what
    undoes it (the server answers again).

    - Each API call is tried once (its retries would take ~30 s each), and no log line is
      queued for the API (they would only be dropped).
    - Each event is sent with one connection attempt: the events client makes ten by default,
      ~7 s an event, so a SIGTERM'd run spent that long at exit on its last event.
    - Prefect's line per lost event, and its traceback of the run's end it could not report,
      are left out: the run says once that the server is lost, and its own end in one line.
    """
    if "prefect" not in sys.modules:
        return lambda: None
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    saved = (settings.client.max_retries, settings.logging.to_api.enabled,
             settings.internal.logging_level)
    settings.client.max_retries, settings.logging.to_api.enabled = 0, False
    settings.internal.logging_level = "CRITICAL"
    clients = [c for service in _prefect_services()
               if hasattr(c := getattr(service, "_client", None), "_reconnection_attempts")]
    attempts = [c._reconnection_attempts for c in clients]
    for c in clients:
        c._reconnection_attempts = 0
    levels = [logging.getLogger(name).level for name in _COMPLAINERS]
    for name in _COMPLAINERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)

    def undo() -> None:
        (settings.client.max_retries, settings.logging.to_api.enabled,
         settings.internal.logging_level) = saved
        for c, n in zip(clients, attempts, strict=True):
            c._reconnection_attempts = n
        for name, level in zip(_COMPLAINERS, levels, strict=True):
            logging.getLogger(name).setLevel(level)

    return undo


@contextlib.contextmanager
def _watch(api: str, what: str) -> Iterator[None]:
    """Say within seconds (one line) when a server the run uses but does not own stops
    answering, and when it answers again; the run itself goes on (Prefect's client retries
    once it answers again: :func:`_while_lost`)."""
    stop = threading.Event()
    lost_since: str | None = None
    undo: Callable[[], None] | None = None

    def watch() -> None:
        nonlocal lost_since, undo
        while not stop.wait(WATCH_PERIOD_S):
            up = healthy(api, timeout=WATCH_PERIOD_S)
            if not up and lost_since is None:
                lost_since = time.strftime("%H:%M:%S")
                undo = _while_lost()
                log.warning("%s at %s does not answer (since %s): the run goes on, but what "
                            "it records there meanwhile is lost", what, api, lost_since,
                            extra=_LOCAL)
            elif up and lost_since is not None:
                if undo is not None:
                    undo()
                    undo = None
                log.warning("%s at %s answers again (it did not from %s)", what, api,
                            lost_since, extra=_LOCAL)
                lost_since = None

    thread = threading.Thread(target=watch, name="gptops-prefect-watch", daemon=True)
    thread.start()
    try:
        yield
    except Exception as exc:
        if lost_since is None:
            raise
        # Prefect's report of the run's end to the lost server failed and took the place of the
        # run's own error (a SIGTERM's Interrupted): raise that, or say the server was lost.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, (GptopsError, Interrupted)):
            cause = cause.__context__
        if cause is None:  # a deliberate stop the flow turned into a Cancelled state
            cause = stopping.stopped()
        if cause is not None:
            raise cause from None
        raise GptopsError(f"{what} at {api} was lost mid-run (since {lost_since}) and the run "
                          f"could not report to it: {exc}; start it again, then re-run (it "
                          "resumes from its checkpoints)") from None
    finally:
        stop.set()
        if lost_since is not None and not healthy(api):
            dropped = _drop_prefect_queues()
            log.warning("%s at %s is still down: %d event(s) and log line(s) it did not get are "
                        "dropped, so that this process ends now", what, api, dropped,
                        extra=_LOCAL)
            # Prefect drains its workers at exit: what they get until then is dropped as well.
            register = getattr(threading, "_register_atexit", None)
            if register is not None:
                register(_drop_prefect_queues)
        elif undo is not None:
            undo()


def _prefect_services() -> list[object]:
    """Prefect's background workers in this process (events, API logs): none where Prefect
    moved them (a lost server then only costs more time)."""
    try:
        from prefect._internal.concurrency.services import _QueueServiceBase
    except ImportError:
        return []
    return list(_QueueServiceBase._instances.values())


def _drop_prefect_queues() -> int:
    """Empty the queues of Prefect's background workers (events, API logs); return how many
    items were dropped. At exit they would otherwise send each item to a dead server, ~7 s
    apiece, for minutes, while SIGTERM has already stopped the run."""
    import queue

    dropped = 0
    for service in _prefect_services():
        q = getattr(service, "_queue", None)
        while q is not None:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            q.task_done()
            if item is None:  # the stop marker: put back
                q.put_nowait(None)
                break
            dropped += 1
    return dropped


@contextlib.contextmanager
def _start_lock(path: Path) -> Iterator[None]:
    """Held while a run's Prefect server starts (and may migrate the workspace's database)."""
    import fcntl

    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # freed by the kernel if this process dies
        yield


def _keep_serving(current: list[subprocess.Popen], start: Callable[[], subprocess.Popen],
                  done: threading.Event, port: int) -> None:
    """Start the run's Prefect server again (same port, same database) when it dies mid-run.

    Its clients retry a lost connection for a while, so the run goes on and its history is
    kept. When it cannot start, the run is stopped with SIGTERM (a clean stop: a checkpoint,
    one line). Runs in a thread that lives as long as the server: the server's parent-death
    signal fires when the thread that started it ends.
    """
    while not done.wait(1.0):
        proc = current[0]
        if proc.poll() is None:
            continue
        if done.is_set() or stopping.stopped():  # the run is ending: no new server
            return
        how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exited with status {proc.returncode}")
        log.warning("the workspace's Prefect server (pid %d) %s mid-run; starting it again on "
                    "port %d (the run goes on)", proc.pid, how, port, extra=_LOCAL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # what is left of its group
        try:
            current[0] = start()
        except GptopsError as exc:
            log.error("the workspace's Prefect server could not be started again (%s); "
                      "stopping the run", exc, extra=_LOCAL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        log.warning("the workspace's Prefect server is back (pid %d); the run's history is kept",
                    current[0].pid, extra=_LOCAL)


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
