"""Checks of a run's inputs before any long work starts.

Everything that can be known to be wrong without training is checked here, in seconds: the
profile and overrides (by loading the params), the data source, the pretrained checkpoint and
tokenizer (found on this machine, GPT-2's architecture, ``model.*`` matching it), the fine-tuning
task file and the SFT file (read and validated the same way the steps read them), the built-in
tasks' need of the built-in corpus, and the tracking URI. Each problem raises one ``GptopsError``
naming the input and the fix. Two checks need the data: ``check_tasks_on_data`` runs right after
the data stages (enough documents for the built-in tasks), ``gpt.train.capacity_warning`` when
pretraining starts.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import socket
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlparse

from gpt.config import HF_PREFIX, Params
from gpt.defaults import MLFLOW_PORT
from gpt.errors import ConfigError, DataError, RegistryError
from gpt.kinds import KINDS
from gpt.layout import Workspace

log = logging.getLogger(__name__)

#: MLflow tracking URI schemes gptops knows how to use.
TRACKING_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "mysql",
                    "mysql+pymysql", "mssql", "http", "https", "file", "databricks")


def sources(params: Params) -> list[str]:
    """The corpora a run reads: ``data.source``, or each of a mixture's ``data.sources``."""
    return [s.source for s in params.data.sources] or [params.data.source]


def check_source(source: str, key: str = "data.source") -> None:
    """``data.source`` (or one of ``data.sources``): the built-in corpus, an existing ``hf:``
    folder or name, or a glob."""
    if not source.strip():
        raise DataError(f"{key} is empty; set it to 'builtin', 'hf:<dataset>' or a glob of "
                        "local files")
    if source == "builtin":
        return
    if source.startswith(HF_PREFIX):
        spec = source.removeprefix(HF_PREFIX).split(":", 1)[0]
        if not spec:
            raise DataError(f"{key} 'hf:' names no dataset; write hf:<folder> or hf:<name>")
        looks_local = spec.startswith((".", "/", "~"))  # else a hub name such as user/data
        if looks_local and not Path(os.path.expanduser(spec)).exists():
            raise DataError(f"{key} '{source}': dataset folder '{spec}' does not exist; "
                            "check the path")
        return
    if not glob.glob(os.path.expanduser(source), recursive=True):
        raise DataError(f"{key} '{source}' matches no files; check the path or set "
                        "data.source=builtin")


#: What the fix of each built-in task says (the task's key, then how to bring one's own data).
_OWN_DATA = {
    "finetune": "finetune.task=file and finetune.task_path=<a .csv/.jsonl/.parquet with columns "
                "text,label>",
    "sft": "sft.task=file and sft.task_path=<a .csv/.jsonl/.parquet with columns "
           "prompt,completion> (or sft.enabled=false)",
}


def _builtin_tasks(params: Params, steps: tuple[str, ...]) -> dict[str, str]:
    """The built-in tasks these ``steps`` use: step -> ``section.task=name``."""
    out = {}
    if "finetune" in steps and params.finetune.task == "package":
        out["finetune"] = "finetune.task=package"
    if "sft" in steps and params.sft.enabled and params.sft.task == "docsummary":
        out["sft"] = "sft.task=docsummary"
    return out


def check_task_corpus(params: Params, steps: tuple[str, ...] = ("finetune", "sft")) -> None:
    """The built-in tasks label documents of the built-in corpus (a docstring's package, its
    first sentence): with any other ``data.source`` they have nothing to learn from, which
    used to show only after pretraining. Known from the params alone, so checked first."""
    tasks = _builtin_tasks(params, steps)
    if "builtin" in sources(params) or not tasks:
        return
    fixes = ", and ".join(_OWN_DATA[step] for step in tasks)
    raise ConfigError(f"{' and '.join(tasks.values())} need{'s' if len(tasks) == 1 else ''} the "
                      f"built-in corpus (data.source=builtin), not data.source "
                      f"'{params.data.source}'; set {fixes}")


def check_tasks_on_data(params: Params, workdir: Path) -> None:
    """Right after the data stages, before any training: the built-in tasks can be built from
    the cleaned documents (``data.max_docs`` may keep too few of a package's docstrings).

    Raises:
        ConfigError: a built-in task with another corpus (see :func:`check_task_corpus`).
        DataError: too few documents for a built-in task, naming ``data.max_docs`` and the fix.
    """
    from gpt.data.shards import read_parts
    from gpt.finetune import build_docsummary_task, build_package_task

    check_task_corpus(params)
    tasks = _builtin_tasks(params, ("finetune", "sft"))
    if not tasks:
        return
    docs = read_parts(Workspace(Path(workdir)).clean, "clean", columns=["doc_id", "source", "name",
                                                                 "text"])
    ft, sft = params.finetune, params.sft
    for step, task in tasks.items():
        try:
            if step == "finetune":
                build_package_task(docs, ft.packages, ft.test_fraction, ft.seed)
            else:
                build_docsummary_task(docs, sft.test_fraction, sft.seed)
        except DataError as exc:
            if not params.data.max_docs:
                raise
            detail = str(exc).split(";")[0].split(": ", 1)[-1]  # the task's reason, no fix
            raise DataError(f"{task} cannot be built from data.max_docs={params.data.max_docs} "
                            f"documents: {detail}; raise data.max_docs (0 = all documents), "
                            f"or set {_OWN_DATA[step]}") from None


def check_tasks(params: Params, steps: tuple[str, ...] = ("finetune", "sft")) -> None:
    """The fine-tuning and SFT files of ``steps``, read and validated as the steps will read
    them; built-in tasks need the built-in corpus."""
    check_task_corpus(params, steps)
    ft = params.finetune
    if "finetune" in steps and ft.task == "file":
        if not ft.task_path:
            raise ConfigError("finetune.task=file needs finetune.task_path (a .csv/.jsonl/"
                              ".parquet with columns text,label)")
        from gpt.finetune import build_task  # torch: only to read a task file

        build_task(ft, None)  # type: ignore[arg-type] - file tasks do not read the corpus
    if "sft" in steps and params.sft.enabled and params.sft.task == "file":
        if not params.sft.task_path:
            raise ConfigError("sft.task=file needs sft.task_path (a .csv/.jsonl/.parquet with "
                              "columns prompt,completion)")
        from gpt.finetune import build_sft_file_task

        build_sft_file_task(params.sft.task_path, params.sft.test_fraction, params.sft.seed)


def check_tracking_uri(uri: str) -> None:
    """A known scheme; for SQLite a readable, unlocked database (waiting a while for a lock to
    go); for a server something listening at its address, and for HTTP an MLflow server."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if not scheme or (len(scheme) == 1 and os.name == "nt"):  # a plain path: MLflow's file store
        _check_file_store(uri)
        return
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"registry.tracking_uri '{uri}': unknown scheme '{scheme}' (known: "
                          f"{', '.join(TRACKING_SCHEMES)}); e.g. sqlite:///path/mlflow.db or "
                          f"http://host:{MLFLOW_PORT}")
    if scheme == "sqlite":
        from gpt.registry.listing import sqlite_path

        path = sqlite_path(uri)
        if path is not None and not path.parent.is_dir():
            raise ConfigError(f"registry.tracking_uri '{uri}': folder {path.parent} does not "
                              "exist; create it or fix the URI")
        if path is not None:
            check_sqlite(uri, path)
        return
    if scheme == "file":
        _check_file_store(uri)
        return
    if scheme == "databricks":
        return
    host = parsed.hostname or "localhost"
    default_port = {"http": 80, "https": 443, "mysql": 3306, "mssql": 1433}.get(
        scheme.split("+")[0], 5432)
    try:
        port = parsed.port or default_port
    except ValueError as exc:  # "host:notaport"
        raise ConfigError(f"registry.tracking_uri '{uri}': {exc}; write host:port with a "
                          "number, e.g. postgresql+psycopg://user@host:5432/mlflow") from exc
    try:
        with socket.create_connection((host, port), timeout=5):
            pass
    except OSError as exc:
        raise ConfigError(f"registry.tracking_uri '{uri}': nothing answers at {host}:{port} "
                          f"({exc.strerror or exc}); start the tracking server or fix the URI"
                          ) from exc
    if scheme.split("+")[0] == "postgresql":
        _check_postgres(uri)
    if scheme in ("http", "https"):
        _check_mlflow_server(uri)


def _check_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store (``file://`` or a plain path) unless opted in."""
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true", "yes"):
        return
    raise ConfigError(f"registry.tracking_uri '{uri}': MLflow's file store is in maintenance "
                      "mode and refuses new runs; use a database, e.g. sqlite:///<folder>/"
                      "mlflow.db (convert an existing folder with `mlflow migrate-filestore`), "
                      "or set MLFLOW_ALLOW_FILE_STORE=true")


#: SQLite's file header (the first 16 bytes of every database file).
_SQLITE_HEADER = b"SQLite format 3\x00"
#: How long a command waits for another process's write lock on an SQLite store to go
#: (environment variable GPTOPS_DB_LOCK_WAIT_S: seconds).
DB_LOCK_WAIT_S = 60.0
#: How often the wait is reported.
_WAIT_REPORT_S = 30.0


def check_sqlite(uri: str, path: Path) -> None:
    """An existing SQLite store is a readable SQLite database that can be written now.

    A write lock held by another process (a write transaction, ``BEGIN EXCLUSIVE``) is waited
    for, with a message every 30 s, for ``GPTOPS_DB_LOCK_WAIT_S`` seconds (60 by default). A
    missing file is fine (MLflow creates it); the check never changes the file.

    Raises:
        RegistryError: not an SQLite database, or still locked after the wait.
    """
    if not path.exists():
        return
    fix_corrupt = (f"restore {path} from a backup, or move it aside (mv {path} {path}.bad) "
                   "and the next run starts a new, empty registry")
    if path.is_dir():
        raise ConfigError(f"registry.tracking_uri '{uri}': {path} is a folder, not an SQLite "
                          "database file; fix the URI")
    with open(path, "rb") as fh:
        head = fh.read(len(_SQLITE_HEADER))
    if head and head != _SQLITE_HEADER:
        raise RegistryError(f"registry.tracking_uri '{uri}': {path} is not an SQLite database "
                            f"(file is not a database); {fix_corrupt}")
    wait_s = float(os.environ.get("GPTOPS_DB_LOCK_WAIT_S") or DB_LOCK_WAIT_S)
    start = time.monotonic()
    reported = -_WAIT_REPORT_S
    while True:
        problem = _sqlite_write_probe(path)
        if problem is None:
            if reported >= 0:
                log.warning("the MLflow database %s is free again after %.0f s", path,
                            time.monotonic() - start)
            return
        if problem != "locked":
            raise RegistryError(f"registry.tracking_uri '{uri}': {path} cannot be read as an "
                                f"SQLite database ({problem}); {fix_corrupt}")
        waited = time.monotonic() - start
        if waited >= wait_s:
            raise RegistryError(f"registry.tracking_uri '{uri}': {path} is locked by another "
                                f"process (a write transaction held for over {waited:.0f} s); "
                                f"find it with `fuser {path}` and end it, or try again later")
        if waited - reported >= _WAIT_REPORT_S:
            reported = waited
            log.warning("waiting for the MLflow database %s: another process holds a write "
                        "lock on it (waited %.0f s of up to %.0f s; GPTOPS_DB_LOCK_WAIT_S)",
                        path, waited, wait_s)
        time.sleep(0.5)


def _sqlite_write_probe(path: Path) -> str | None:
    """None if ``path`` reads as SQLite and a write transaction can start now; ``"locked"``
    while another process holds a lock that blocks writers; else SQLite's message."""
    writable = os.access(path, os.W_OK)  # a read-only store still serves models, predict ...
    try:
        conn = sqlite3.connect(f"file:{path}?mode={'rw' if writable else 'ro'}", uri=True,
                               timeout=0.2, isolation_level=None)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if writable:
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock, lets it go: writes nothing
            conn.execute("ROLLBACK")
        return None
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return "locked"
        if "readonly" in text or "read-only" in text:  # readers (models, predict) can go on
            return None
        return text
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
        return str(exc)
    finally:
        conn.close()


def _check_mlflow_server(uri: str) -> None:
    """Ask the server what MLflow's client will ask (search experiments), 5 s at most: a web
    server that is not MLflow answers something else."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    headers = {"Accept": "application/json"}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        import base64

        pair = (f"{os.environ['MLFLOW_TRACKING_USERNAME']}:"
                f"{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}")
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    context = None
    if uri.lower().startswith("https") and os.environ.get(
            "MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        import ssl

        context = ssl._create_unverified_context()  # noqa: S323 - the user asked for it
    not_mlflow = (f"registry.tracking_uri '{uri}': the server there does not answer as an "
                  "MLflow tracking server")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5,
                                    context=context) as resp:
            ctype = resp.headers.get_content_type()
            body = resp.read(1 << 20)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ConfigError(f"registry.tracking_uri '{uri}': the MLflow server refused us "
                              f"(HTTP {exc.code}); set MLFLOW_TRACKING_USERNAME and "
                              "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN") from exc
        raise ConfigError(f"{not_mlflow} (HTTP {exc.code} for /api/2.0/mlflow/experiments/"
                          "search); check the host, port and path (e.g. "
                          f"http://host:{MLFLOW_PORT})"
                          ) from exc
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", None) or exc
        raise ConfigError(f"registry.tracking_uri '{uri}': no HTTP answer ({why}); start the "
                          "MLflow server or fix the URI") from exc
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or (data and not {"experiments", "next_page_token"} & set(data)):
        raise ConfigError(f"{not_mlflow} (/api/2.0/mlflow/experiments/search gave {ctype}, not "
                          "MLflow's JSON); check the host, port and path (e.g. "
                          f"http://host:{MLFLOW_PORT})")


def _check_postgres(uri: str) -> None:
    """Log in and open the database now (5 s at most), not after minutes of MLflow retries."""
    try:
        import psycopg
    except ImportError:  # another driver: MLflow will say
        return
    conninfo = "postgresql" + uri[uri.index("://"):]
    try:
        psycopg.connect(conninfo, connect_timeout=5).close()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ConfigError(f"registry.tracking_uri '{uri}': PostgreSQL refused it ({first}); "
                          "create the database (createdb) or fix the user, password or name"
                          ) from exc


def check_pretrained(params: Params) -> None:
    """``model.init_from`` and ``tokenizer.pretrained``: on this machine (a folder, or a hub id
    in the Hugging Face cache or downloadable now), GPT-2's architecture, ``model.*`` matching
    the checkpoint's config, and a tokenizer next to it."""
    if not (params.model.init_from or params.tokenizer.pretrained):
        return
    from gpt import hf  # torch: only for a run that names a checkpoint

    if params.model.init_from:
        ck = hf.resolve(params.model.init_from, "model.init_from")
        hf.check_model_config(params.model, ck)
        hf.weight_files(ck)
    if params.tokenizer.pretrained:
        hf.tokenizer_files(hf.resolve(params.tokenizer.pretrained, "tokenizer.pretrained",
                                      need="tokenizer"))


#: What a folder may hold and still count as empty: a fresh `git init` (DVC versions the data
#: in git), and gptops' own folder.
_EMPTY_OK = {".git", Workspace.relative().state.name}


def check_workdir(workdir: Path, init: bool = False) -> None:
    """``--workdir``: never the filesystem root or the home folder itself; a non-empty folder
    that is not a workspace only with ``init`` (it gets params.yaml, dvc.yaml, .dvc/, .gptops/).
    """
    path = Path(workdir).expanduser().resolve()
    if path == Path(path.anchor):
        raise ConfigError(f"--workdir {path} is the filesystem root: gptops writes params.yaml, "
                          "dvc.yaml, .dvc/ and .gptops/ into its workspace; use a folder of its "
                          "own, e.g. -w ~/gptops-ws")
    if path == Path.home().resolve():
        raise ConfigError(f"--workdir {path} is your home folder: gptops writes params.yaml, "
                          "dvc.yaml, .dvc/ and .gptops/ into its workspace; use a folder of its "
                          "own, e.g. -w ~/gptops-ws")
    ws = Workspace(path)
    if init or not path.is_dir() or ws.params_yaml.is_file() or ws.dvc_yaml.is_file():
        return
    others = sorted(p.name for p in path.iterdir() if p.name not in _EMPTY_OK)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ConfigError(f"--workdir {path} is not empty ({shown}) and not a gptops workspace "
                          "(no params.yaml or dvc.yaml): pass --init to make it one, or use an "
                          "empty or new folder")


def check_benchmarks(params: Params) -> None:
    """``evaluate.benchmarks``/``benchmark_dirs`` can run here (lm-eval is imported only when
    a hub task is named), and ``registry.gate`` lists metrics each model kind will have."""
    from gpt import benchmarks as bm
    from gpt.pipeline.candidates import gate_metrics, kind_metrics

    e = params.evaluate
    bm.check_hub_tasks(e.benchmarks, e.benchmark_dirs)
    tasks = set(bm.suite(None, e.benchmarks, e.benchmark_dirs, 0).tasks)
    if e.builtin_benchmarks:
        tasks |= set(bm.BUILTIN)
    for k in KINDS:
        own = kind_metrics(k.name, params)
        for metric in gate_metrics(k.name, params):
            if metric in own:
                continue
            task = metric.split(".")[1] if metric.startswith("bench.") else None
            if k.language_model and task in tasks and metric.count(".") >= 2:
                continue
            bench = (f"; or bench.<task>.<metric> of a task it runs ({', '.join(sorted(tasks))})"
                     if k.language_model and tasks else "")
            which, empty = ((f" (sft.task_type={params.sft.task_type})",
                             " ([] = the type's standard metric)") if k.name == "sft" else ("", ""))
            raise ConfigError(f"{k.gate_key} lists '{metric}', which the {k.name} model's "
                              f"evaluation{which} does not produce; use one of {', '.join(own)}"
                              f"{empty}{bench}")


def check_run(params: Params, tracking_uri: str) -> None:
    """Every input of a pipeline run (the params themselves are already valid)."""
    from gpt.pipeline.candidates import model_name

    for i, source in enumerate(sources(params)):
        check_source(source, f"data.sources[{i}]" if params.data.sources else "data.source")
    check_pretrained(params)
    check_tasks(params)
    check_benchmarks(params)
    for k in KINDS:  # a name MLflow cannot register fails now, not after training
        model_name(k.name, params)
    check_tracking_uri(tracking_uri)


def check_writable(workdir: Path) -> None:
    """The workspace can be written (``.gptops/``: run history, lock, logs; ``data/``;
    params.yaml): probed by writing a file, since permission bits say nothing to root or of a
    read-only mount. A workspace not made yet is probed in its nearest existing parent."""
    import errno
    import tempfile

    ws = Path(workdir).expanduser().resolve()
    probe = next(p for p in (Workspace(ws).state, ws, *ws.parents) if p.is_dir())
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".gptops-write-check-"):
            pass
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise ConfigError(f"workspace {ws} cannot be written ({probe}: {exc.strerror}): gptops "
                          "writes .gptops/, data/ and params.yaml there; make it writable (e.g. "
                          f"`chmod -R u+w {ws}`, or remount it read-write) or run on a writable "
                          f"copy (`cp -a {ws} <new folder>`, then -w <new folder>)") from None
