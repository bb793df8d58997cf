"""The workspace's DVC repository: initialisation, the data stages, their outputs, the remote.

``ensure_workspace`` makes any folder a workspace: it copies the project's templates
(``params.yaml``, ``dvc.yaml``) when absent, runs ``dvc init`` and configures a local default
remote (:attr:`gpt.layout.Workspace.dvc_remote`). ``run_stage`` reproduces one data stage
(``dvc repro``) with one-line errors and clean stops; ``verify_outputs`` holds the outputs to
``dvc.lock``; ``push`` sends them to the remote; ``data_version`` is the hash of ``dvc.lock``'s
outputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpt import stopping
from gpt.errors import (
    ERROR_FILE_ENV,
    ConfigError,
    DataError,
    Interrupted,
    NoSpaceError,
    no_space,
)
from gpt.gitinfo import in_git
from gpt.layout import PROJECT_ROOT, Workspace
from gpt.params_file import upgrade_params

log = logging.getLogger(__name__)

STAGES = ("ingest", "clean", "tokenize")


def _env() -> dict[str, str]:
    """Environment for DVC stage commands: this interpreter's scripts first on PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["DVC_NO_ANALYTICS"] = "1"
    return env


#: DVC's own banner after any failure: not the cause.
_DVC_NOISE = ("Having any troubles?",)


def dvc_error(output: str) -> str:
    """The cause in DVC's output: its ERROR lines (its support banner dropped)."""
    lines = [ln.strip() for ln in output.splitlines()
             if ln.strip() and not ln.strip().startswith(_DVC_NOISE)]
    errors = [ln.removeprefix("ERROR:").strip().removeprefix("unexpected error - ").strip()
              for ln in lines if ln.startswith("ERROR")]
    return "; ".join(errors) if errors else (lines[-1] if lines else "no output")


def _dvc(workdir: Path, *args: str) -> str:
    # Never -q: DVC's quiet mode keeps its support banner and drops the error itself.
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=workdir, env=_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"`dvc {' '.join(args)}` failed in {workdir}: "
                        f"{dvc_error(proc.stderr + proc.stdout)[:1000]}")
    return proc.stdout



def ensure_workspace(workdir: Path, init: bool = False) -> Path:
    """Make ``workdir`` a DVC workspace with a local default remote; return its absolute path.

    Refuses the filesystem root, the home folder, and (unless ``init``) a non-empty folder that
    is not a workspace (:func:`gpt.preflight.check_workdir`), before writing anything.
    """
    from gpt.preflight import check_workdir

    check_workdir(workdir, init)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ws, project = Workspace(workdir), Workspace(PROJECT_ROOT)
    for own, src in ((ws.params_yaml, project.params_yaml), (ws.dvc_yaml, project.dvc_yaml)):
        if not own.exists():
            if not src.is_file():
                raise ConfigError(f"{own} is missing and no template was found at "
                                  f"{src}; copy params.yaml and dvc.yaml into {workdir}")
            text = src.read_text(encoding="utf-8")
            if own == ws.dvc_yaml and workdir != PROJECT_ROOT:
                # Stages depend on the code that runs them; outside the project, by absolute path.
                text = text.replace("- gpt/", f"- {PROJECT_ROOT}/gpt/")
            own.write_text(text, encoding="utf-8")
    upgrade_params(ws.params_yaml)
    _init_dvc(ws)
    return workdir


def _init_dvc(ws: Workspace) -> None:
    """``dvc init`` (``--no-scm`` outside git) with analytics off, and a local default remote
    unless a remote is configured at any level: through DVC's API in this process (a ``dvc``
    command costs an interpreter start and DVC's imports, ~0.7 s each)."""
    from dvc.config_schema import RelPath
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = str(ws.root)
    try:
        if ws.dvc_dir.is_dir():
            repo = Repo(root)
        else:
            with _quiet_dvc():  # "Initialized DVC repository."
                repo = Repo.init(root, no_scm=not in_git(ws.root))
            with repo.config.edit() as conf:
                conf["core"]["analytics"] = "false"
        with repo:
            if not repo.config["remote"]:
                remote = ws.dvc_remote
                remote.mkdir(parents=True, exist_ok=True)
                with repo.config.edit() as conf:
                    # Stored relative to .dvc/, as `dvc remote add` does: a copied workspace
                    # pushes to its own remote.
                    conf["remote"]["local"] = {"url": RelPath(remote)}
                    conf["core"]["remote"] = "local"
    except DvcException as exc:
        raise DataError(f"DVC could not set up the workspace {ws.root}: {exc}") from None




@contextlib.contextmanager
def _quiet_dvc():
    """DVC's own INFO lines ("Running stage", "Updating lock file") repeat ours: keep warnings."""
    lg = logging.getLogger("dvc")
    level = lg.level
    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(level)


@dataclass
class StageOutcome:
    stage: str
    ran: bool


class _CacheErrors(logging.Filter):
    """DVC logs a failure to copy an output into its cache and goes on as if it had worked
    (``dvc_data``'s transfer): keep those errors for our one line instead of printing them."""

    LOGGER = "dvc_data.hashfile.transfer"

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])
            return False
        return True

    def __enter__(self) -> _CacheErrors:
        logging.getLogger(self.LOGGER).addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(self.LOGGER).removeFilter(self)


def _uncached_outs(repo: Any, stages: list[Any]) -> list[str]:
    """The outputs of ``stages`` that are not all in the local DVC cache.

    Only checks that the cache files exist: the hashes are the ones DVC just computed (each
    output's in-memory tree), nothing is read or hashed again.
    """
    odb = repo.cache.local
    missing = []
    for stage in stages:
        for out in stage.outs:
            if not out.use_cache or not (out.hash_info and out.hash_info.value):
                continue
            oids = [out.hash_info.value]
            if out.hash_info.isdir and out.obj is not None:
                oids += [oid.value for _, _, oid in out.obj]
            if not all(odb.exists(oid) for oid in oids):
                missing.append(str(out))
    return missing


def _put_back(path: Path, content: bytes | None) -> None:
    """Make ``path`` hold ``content`` again (``None``: absent), if it changed."""
    now = path.read_bytes() if path.is_file() else None
    if now == content:
        return
    if content is None:
        path.unlink()
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(content)
        os.replace(tmp, path)
    except OSError:  # a full disk: in place, into the blocks the file frees
        tmp.unlink(missing_ok=True)
        path.write_bytes(content)
    log.info("%s put back as it was before the stage", path)


def _causes(exc: BaseException) -> str:
    """``exc``'s message and those of the exceptions behind it, without repeats: DVC wraps its
    real error ("Unable to read RWLock-file ...") in "failed to reproduce 'ingest'"."""
    messages: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).strip()
        if text and not any(text in m for m in messages):
            messages.append(text)
        exc = exc.__cause__ or exc.__context__
    return ": ".join(messages) or "no message"


def _stage_error(stage: str, exc: BaseException, err_file: Path, workdir: Path) -> DataError:
    """The one-line error of a failed ``dvc repro``: the stage command's own (which it wrote
    to ``err_file``), a full disk DVC hit, else DVC's own message (and its cause)."""
    if err_file.is_file():
        detail = err_file.read_text(encoding="utf-8")
    elif (full := no_space(exc)) is not None:
        where = Path(full.filename).parent if full.filename else workdir
        detail = str(NoSpaceError(where, "free space there, then re-run the stage"))
    else:
        detail = _causes(exc)
    return DataError(f"data stage '{stage}' failed: {detail}")


def _cache_error(stage: str, missing: list[str], errors: list[BaseException],
                 cache_dir: str) -> DataError:
    """The one-line error of a stage whose outputs DVC could not copy into its cache."""
    fix = (f"DVC could not copy {', '.join(missing)} into its cache; free space there or move "
           f"the DVC cache (`dvc cache dir <folder on a larger disk>`), then re-run the stage")
    if any(no_space(e) for e in errors):
        detail = str(NoSpaceError(cache_dir, fix))
    else:
        cause = f" ({errors[0]})" if errors else ""
        detail = (f"{', '.join(missing)} could not be copied into the DVC cache {cache_dir}"
                  f"{cause}; fix the cache folder (`dvc cache dir`), then re-run the stage")
    return DataError(f"data stage '{stage}' failed: {detail}")


def repair_dvc_locks(workdir: Path) -> bool:
    """Repair ``.dvc/tmp/rwlock`` when a killed DVC process left it empty or half-written.

    DVC rewrites that file in place; a process killed during the write leaves it invalid, and
    DVC then refuses every command ("Unable to read RWLock-file ... JSON structure is
    corrupted"). Its entries (stage outputs held by a pid) cannot be read back, and the caller
    holds the workspace, so no gptops process holds them: it is reset to no entries, under DVC's
    own guard of the file (a DVC process editing it right now is waited for). Entries of dead
    processes in a valid file DVC removes itself (with a warning). ``.dvc/tmp/lock`` needs no
    repair: it is an ``fcntl`` lock, released by the kernel when its holder dies, whatever the
    file holds. Returns whether the file was repaired.

    Raises:
        DataError: the file is invalid and cannot be rewritten (naming it and the fix).
    """
    from dvc.lock import LockError, make_lock

    tmp = Workspace(Path(workdir)).dvc_dir / "tmp"
    path = tmp / "rwlock"

    def invalid() -> str:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as exc:
            return str(exc)
        if not text.strip():
            return "empty"
        try:
            return "" if isinstance(json.loads(text), dict) else "not a JSON object"
        except json.JSONDecodeError as exc:
            return f"not valid JSON: {exc}"

    if not invalid():
        return False
    try:
        with make_lock(str(tmp / "rwlock.lock"), tmp_dir=str(tmp)):
            why = invalid()
            if not why:
                return False
            fixed = tmp / f".rwlock.{os.getpid()}.tmp"
            fixed.write_text("{}", encoding="utf-8")
            os.replace(fixed, path)
    except LockError:
        return False  # a live DVC process is editing it: DVC itself will say what it finds
    except OSError as exc:
        raise DataError(f"{path} is invalid ({why}), left by a DVC process that was killed, and "
                        f"cannot be repaired ({exc}); remove it (`rm {path}`) and re-run"
                        ) from exc
    log.warning("repaired %s: it was %s (a DVC process was killed while writing it); its "
                "stage locks were reset", path, why)
    return True


#: Seconds a stage command gets to stop after a signal is passed on, before it is killed.
STOP_GRACE_S = 3.0


def _stage_processes() -> list[Any]:
    """This process's descendants in its own process group: the stage command DVC started (and
    its workers). Not the Prefect server, which runs in a session of its own."""
    import psutil

    group = os.getpgid(0)
    out = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(child.pid) == group:
                out.append(child)
    return out


def _stop_stage(done: threading.Event, signum: int) -> None:
    """Pass ``signum`` on to the stage command (also to one started in the meantime), give it
    :data:`STOP_GRACE_S` to stop, then kill it; wait for DVC to end (it releases its locks)."""
    import psutil

    told: set[int] = set()
    deadline = time.monotonic() + STOP_GRACE_S
    while not done.is_set():
        late = time.monotonic() > deadline
        for proc in _stage_processes():
            if late or proc.pid not in told:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL if late else signum)
                told.add(proc.pid)
        done.wait(0.1)


def _in_worker_thread(fn: Any, stage: str) -> Any:
    """``fn()`` in a thread, so that a signal's exception (raised in the main thread) never
    lands inside DVC's writes of its lock files; on a signal, the stage command is stopped and
    :class:`Interrupted` names the stage."""
    box: dict[str, Any] = {}
    # Waited for with an Event, not Thread.join: a join cut by the signal's exception leaves
    # the thread looking finished (Python 3.11).
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            box["error"] = exc
        finally:
            done.set()

    context = contextvars.copy_context()  # the Prefect task's context: its log lines
    thread = threading.Thread(target=context.run, args=(target,), name=f"dvc-{stage}",
                              daemon=True)
    thread.start()
    try:
        while not done.wait(0.2):
            pass
    except BaseException as exc:
        signum = stopping.signum_of(exc)
        _stop_stage(done, signum or signal.SIGTERM)
        if signum is None:
            raise
        raise stopping.remember(Interrupted(
            signum, f"data stage '{stage}': stopped by {stopping.signal_name(signum)} (a re-run "
                    "resumes it)")) from None
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _unweighted(data: Any) -> Any:
    """The ``data`` section without the mixture's weights (what ingest reads of it)."""
    if not isinstance(data, dict):
        return data
    return {**data, "sources": [{k: v for k, v in s.items() if k != "weight"}
                                if isinstance(s, dict) else s for s in data.get("sources") or []]}


def _weights_only(repo: Any, workdir: Path) -> bool:
    """True when the ingest stage changed in nothing but ``data.sources``' weights (its code,
    other params and outputs as ``dvc.lock`` records them)."""
    if repo.status(targets=["ingest"]).get("ingest") != [
            {"changed deps": {"params.yaml": {"data": "modified"}}}]:
        return False
    lock = yaml.safe_load((workdir / "dvc.lock").read_text())
    recorded = lock["stages"]["ingest"]["params"]["params.yaml"].get("data")
    now = yaml.safe_load((workdir / "params.yaml").read_text()).get("data")
    return recorded != now and _unweighted(recorded) == _unweighted(now)


def run_stage(workdir: Path, stage: str, force: bool = False) -> StageOutcome:
    """``dvc repro --single-item <stage>``: runs it only if its deps/params/outs changed
    (always with ``force``).

    A stage whose outputs did not all reach the DVC cache (a full disk) has failed, although
    DVC only logs it: ``dvc.lock`` is put back as it was, so nothing downstream takes the
    uncached outputs for a data version. SIGTERM/SIGINT stop the stage command (passed on to
    it, killed after :data:`STOP_GRACE_S`) and leave DVC's lock files valid; a lock file a killed
    DVC left invalid is repaired first (:func:`repair_dvc_locks`).

    Raises:
        DataError: one line, the stage's own error, the full folder (``no space left on``), or
            DVC's own message.
        Interrupted: SIGTERM/SIGINT, naming the stage.
    """
    from dvc.repo import Repo

    if stage not in STAGES:
        raise ConfigError(f"unknown data stage '{stage}' (known: {', '.join(STAGES)})")
    workdir = Path(workdir).resolve()
    ws = Workspace(workdir)
    err_file = ws.stage_error(stage)
    err_file.parent.mkdir(parents=True, exist_ok=True)
    err_file.unlink(missing_ok=True)
    repair_dvc_locks(workdir)
    lock = ws.dvc_lock
    lock_before = lock.read_bytes() if lock.is_file() else None
    saved = {k: os.environ.get(k) for k in ("PATH", ERROR_FILE_ENV)}
    os.environ["PATH"] = _env()["PATH"]
    os.environ[ERROR_FILE_ENV] = str(err_file)

    def reproduce() -> tuple[Any, list[str], str, _CacheErrors]:
        # DVC resolves targets and runs commands relative to the working directory.
        with contextlib.chdir(workdir), Repo(str(workdir)) as repo, _quiet_dvc(), \
                _CacheErrors() as cache_errors:
            repo.scm_context.quiet = True  # no "git add dvc.lock" hints: we track dvc.lock
            if stage == "ingest" and not force and _weights_only(repo, workdir):
                # ingest lists the data section, yet reads no weight: record the new weights
                # with the outputs as they are (dvc commit), so nothing downstream re-runs
                repo.commit(stage, force=True)
                log.info("stage ingest: only data.sources weights changed (training reads "
                         "them): recorded, not re-run")
                return [], [], repo.cache.local_cache_dir, cache_errors
            ran = repo.reproduce(stage, single_item=True, force=force)
            return ran, _uncached_outs(repo, ran or []), repo.cache.local_cache_dir, cache_errors

    try:
        with stopping.step(f"data stage '{stage}'"):
            ran, missing, cache_dir, cache_errors = _in_worker_thread(reproduce, stage)
    except Interrupted:
        _put_back(lock, lock_before)
        raise
    except Exception as exc:
        # DVC wraps the stage command's failure; the command wrote its one-line error to a file.
        _put_back(lock, lock_before)
        raise _stage_error(stage, exc, err_file, workdir) from exc
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if missing:
        _put_back(lock, lock_before)
        raise _cache_error(stage, missing, cache_errors.errors, cache_dir)
    for error in cache_errors.errors:  # logged by DVC, yet every output is cached
        log.warning("stage %s: DVC reported %s", stage, error)
    outcome = StageOutcome(stage=stage, ran=bool(ran))
    log.info("stage %s: %s", stage, "ran" if outcome.ran else "unchanged, reused (DVC cache)")
    return outcome


#: The data outputs training and evaluation read, and the stage that writes each.
READ_BY_STEPS = {Workspace.relative().clean.as_posix(): "clean",
                 Workspace.relative().tokens.as_posix(): "tokenize"}


def verify_outputs(workdir: Path) -> None:
    """Refuse data outputs that differ from what ``dvc.lock`` records (flipped bytes, a file
    replaced or deleted): they are not the data version the step would be keyed and tagged by.

    DVC's own status (its state cache makes unchanged files free to check).

    Raises:
        DataError: naming the output and the fix.
    """
    from dvc.repo import Repo

    workdir = Path(workdir).resolve()
    if not Workspace(workdir).dvc_lock.is_file():
        raise DataError(f"{Workspace(workdir).dvc_lock} not found; run the data stages first "
                        "(`gptops run`)")
    with contextlib.chdir(workdir), Repo(str(workdir)) as repo, _quiet_dvc():
        status = repo.status(targets=sorted(set(READ_BY_STEPS.values())))
    for entries in status.values():
        for entry in entries:
            for path, state in (entry.get("changed outs") or {}).items() \
                    if isinstance(entry, dict) else ():
                stage = READ_BY_STEPS.get(path, path)
                raise DataError(f"{path} does not match dvc.lock ({state}): restore it with "
                                f"`dvc checkout {path}` in {workdir}, or re-run the stage "
                                f"(`gptops data {stage}`)")




def _local_remote(workdir: Path) -> Path | None:
    """The default remote's folder when it is a local path, else None."""
    from dvc.repo import Repo

    try:
        with Repo(str(workdir)) as repo:
            name = repo.config["core"].get("remote", "")
            url = str(repo.config["remote"].get(name, {}).get("url", "")) if name else ""
    except Exception:  # noqa: BLE001 - not a DVC repo (yet): nothing to say
        return None
    if not url or "://" in url:
        return None
    path = Path(url)
    return path if path.is_absolute() else (Workspace(Path(workdir)).dvc_dir / path).resolve()


def push(workdir: Path) -> None:
    """Push the data outputs to the default DVC remote.

    A local remote that pushes reached before and that is gone now is recreated by DVC, empty:
    say that the data versions pushed there before cannot be pulled any more.
    """
    workdir = Path(workdir)
    mark = Workspace(workdir).pushed_mark
    remote = _local_remote(workdir)
    if remote is not None and not remote.exists() and mark.is_file():
        log.warning("the DVC remote %s is gone: the data versions pushed there before can no "
                    "longer be restored with `dvc pull`; pushing the current one to a new, empty "
                    "remote (restore the folder from a backup to keep the history)", remote)
    _dvc(workdir, "push")
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(f"{remote or 'remote'}\n", encoding="utf-8")


def data_version(workdir: Path) -> str:
    """Short hash over the output hashes recorded in ``dvc.lock`` (the data version)."""
    lock = Workspace(Path(workdir)).dvc_lock
    if not lock.is_file():
        raise DataError(f"{lock} not found; run the data stages first (`gptops run`)")
    doc: dict[str, Any] = yaml.safe_load(lock.read_text())
    outs = {f"{stage}:{o['path']}": o.get("md5") for stage, body in sorted(
        doc.get("stages", {}).items()) for o in body.get("outs", [])}
    return hashlib.sha256(json.dumps(outs, sort_keys=True).encode()).hexdigest()[:12]


def lock_outs(workdir: Path) -> dict[str, str]:
    """``{path: md5}`` of every stage output in ``dvc.lock``."""
    doc = yaml.safe_load(Workspace(Path(workdir)).dvc_lock.read_text())
    return {o["path"]: o.get("md5") for body in doc.get("stages", {}).values()
            for o in body.get("outs", [])}
