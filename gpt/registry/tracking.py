"""MLflow tracking: where runs go, and the run structure of a pipeline.

One pipeline run is one MLflow *parent* run (named after the Prefect flow run, or a timestamp on
the CLI). Each training step opens a nested *child* run that ends when the step ends (FAILED on
error), so durations in the MLflow UI are true, and logs its input data with ``log_inputs`` (a
dataset whose digest is the data version and whose source is the DVC output), so the UI's Dataset
column shows the lineage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpt.envshare import scratch_beside, share_dir
from gpt.errors import Interrupted, StoppedEarly
from gpt.layout import Workspace
from gpt.registry.listing import sqlite_path
from gpt.registry.tags import FLOW_RUN_URL, capped

#: The tag MLflow's UI nests child runs by.
PARENT_TAG = "mlflow.parentRunId"
#: MLflow's run description (shown on the run's page and as a column of the runs table).
NOTE_TAG = "mlflow.note.content"
#: The tag of a step's run that a callback stopped on purpose (a pruned trial): why.
STOPPED_EARLY_TAG = "gptops.stopped_early"
_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

log = logging.getLogger(__name__)


def default_tracking_uri(workdir: Path) -> str:
    """SQLite under ``<workdir>/.gptops/mlflow.db`` (created on first use).

    A store copied or moved with its workspace is first repointed at the workspace it is in
    now (:func:`adopt_workspace_store`).
    """
    root = Path(workdir).resolve()
    path = Workspace(root).mlflow_db
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        adopt_workspace_store(root, path)
    return f"sqlite:///{path}"


def adopt_workspace_store(root: Path, db: Path) -> list[str]:
    """Repoint the workspace's own store ``db`` at ``root`` when it was copied or moved there.

    MLflow keeps absolute locations (experiments' ``artifact_location``, runs' ``artifact_uri``,
    model versions' ``source`` and ``storage_location``, logged models, dataset sources), so a
    copy would read and write the original's ``.gptops/mlartifacts``. The old root is read from
    the experiments' artifact locations (``<old root>/.gptops/mlartifacts``); every text value
    under it, and the workspace tag, is rewritten to ``root`` in one transaction, and that is
    said once. Only ``db`` is written: never the original. Unreadable or busy stores are left
    alone (preflight says what is wrong with them).

    Returns:
        The old roots that were replaced (empty when the store was already this workspace's).
    """
    try:
        # A short wait to read: a store locked for longer is preflight's to report.
        conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=0.5,
                               isolation_level=None)
    except sqlite3.Error:
        return []
    try:
        if not _old_roots(conn, root):
            return []
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("BEGIN IMMEDIATE")
        # Read again under the write lock: another command may have repaired it meanwhile.
        olds = _old_roots(conn, root)
        changed = sum(_repoint(conn, old, root) for old in olds)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        log.debug("MLflow store %s not checked for a moved workspace: %s", db, exc)
        return []
    finally:
        conn.close()
    if olds:
        log.warning("this workspace was copied or moved from %s: its MLflow store now points "
                    "at its own artifacts under %s (%d values updated; the original is "
                    "untouched)", ", ".join(olds), Workspace(root).mlartifacts, changed)
    return olds


def _old_roots(conn: sqlite3.Connection, root: Path) -> list[str]:
    """Workspace roots other than ``root`` that the store's experiments keep artifacts under."""
    from urllib.parse import unquote, urlparse

    suffix = "/" + Workspace.relative().mlartifacts.as_posix()
    try:
        rows = conn.execute("SELECT artifact_location FROM experiments").fetchall()
    except sqlite3.OperationalError:  # no tables yet
        return []
    olds = set()
    for (location,) in rows:
        if location and location.startswith("file://"):
            path = unquote(urlparse(location).path).rstrip("/")
            if path.endswith(suffix):
                olds.add(path.removesuffix(suffix))
    olds.discard(str(root))
    return sorted(olds)


def _repoint(conn: sqlite3.Connection, old: str, root: Path) -> int:
    """Rewrite ``old``'s paths (plain and as file URIs) to ``root``'s in every text column, and
    the workspace id (``host:<old>``, in run and version tags) to this one."""
    pairs = [(old + "/", f"{root}/")]
    quoted = Path(old).as_uri().removeprefix("file://") + "/"  # "%20" for a space ...
    if quoted != pairs[0][0]:
        pairs.append((quoted, root.as_uri().removeprefix("file://") + "/"))
    changed = 0
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
        "AND name != 'alembic_version'")]
    for table in tables:
        columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')
                   if any(t in (r[2] or "TEXT").upper() for t in ("CHAR", "TEXT", "CLOB"))]
        for column in columns:
            for before, after in pairs:
                cur = conn.execute(f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, '
                                   f'?) WHERE instr("{column}", ?) > 0', (before, after, before))
                changed += cur.rowcount
            cur = conn.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE '
                               f'substr("{column}", -?) = ?',
                               (workspace_id(root), len(old) + 1, f":{old}"))
            changed += cur.rowcount
    return changed


def resolve_tracking_uri(configured: str, workdir: Path) -> str:
    """``registry.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the project-local SQLite."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(workdir)


def blank_store() -> Path:
    """Where this environment keeps an empty MLflow SQLite database at its MLflow's schema (in
    the interpreter's prefix, named after the MLflow version; it may not exist yet)."""
    from importlib.metadata import version

    return share_dir() / f"mlflow-{version('mlflow')}.db"


def make_blank_store() -> Path | None:
    """Make :func:`blank_store` when it is missing (MLflow creates a database by running every
    schema migration since its first: ~1 s, at each new workspace's first run otherwise);
    return it, or None when the prefix is read-only."""
    path = blank_store()
    if path.is_file():
        return path
    work = scratch_beside(path, ".mlflow-db-")
    if work is None:
        return None
    try:
        from mlflow.store.model_registry.sqlalchemy_store import (
            SqlAlchemyStore as RegistryStore,
        )
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        uri = f"sqlite:///{work / 'mlflow.db'}"
        for store in (SqlAlchemyStore(uri, (work / "mlruns").as_uri()), RegistryStore(uri)):
            store.engine.dispose()
        with contextlib.closing(sqlite3.connect(work / "mlflow.db")) as src, \
                contextlib.closing(sqlite3.connect(work / "blank.db")) as dst:
            src.backup(dst)  # one consistent file, whatever MLflow's connections left
        (work / "blank.db").replace(path)  # atomic: two makers leave one whole file
        return path
    except Exception as exc:  # noqa: BLE001 - any failure: stores are created as MLflow does
        log.debug("no empty MLflow database prepared (%s); new stores are created by MLflow", exc)
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def seed_store(tracking_uri: str) -> bool:
    """Give a SQLite store that does not exist yet a copy of :func:`blank_store` (made first if
    needed), its default experiment's artifacts beside it; True when it was seeded."""
    db = sqlite_path(tracking_uri)
    if db is None or db.exists() or not db.parent.is_dir():
        return False
    blank = make_blank_store()
    if blank is None:
        return False
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(blank, tmp)
        with contextlib.closing(sqlite3.connect(tmp)) as con, con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                        ((db.parent / "mlartifacts" / "0").as_uri(),))
        os.link(tmp, db)  # fails when another process made it meanwhile: theirs stays
        return True
    except (OSError, sqlite3.Error):
        return False
    finally:
        tmp.unlink(missing_ok=True)


def client(tracking_uri: str):  # -> mlflow.MlflowClient
    """An MLflow client on ``tracking_uri`` for both tracking and the model registry (a new
    SQLite store starts as a copy of this environment's empty one: :func:`seed_store`)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    seed_store(tracking_uri)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextmanager
def global_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-global URIs at ``tracking_uri``, then restore them exactly.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``; without
    the restore, a later call (or a child process) would silently use this store.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in _URI_ENV}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def reopened(tracking_uri: str, run_id: str) -> Iterator[None]:
    """MLflow's fluent API inside the (perhaps finished) run ``run_id``, for logging a model.

    The run's status and end time are put back afterwards: logging a model at registration must
    not stretch the duration of the training run it belongs to.
    """
    import mlflow

    c = client(tracking_uri)
    before = c.get_run(run_id).info
    with global_uri(tracking_uri), mlflow.start_run(run_id=run_id):
        yield
    if before.end_time:
        c.set_terminated(run_id, status=before.status, end_time=before.end_time)


#: MLflow 3's UI opens an experiment in its model-training view (runs, metrics, models) rather
#: than its GenAI view (traces) when the experiment carries this tag.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id(tracking_uri: str, experiment: str) -> str:
    """The experiment's id, creating it (with SQLite: artifacts beside the database, not cwd),
    marked as a model-training experiment for the MLflow UI."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        db = sqlite_path(tracking_uri)
        location = (db.parent / "mlartifacts").resolve().as_uri() if db else None
        with contextlib.suppress(Exception):  # created concurrently by another pipeline
            c.create_experiment(experiment, artifact_location=location,
                                tags=dict([EXPERIMENT_KIND]))
        exp = c.get_experiment_by_name(experiment)
    if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # made by an older gptops
        c.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


#: Threads opening a store, by (tracking URI, experiment): at most one each per process.
_OPENING: dict[tuple[str, str], threading.Thread] = {}


def open_store_soon(tracking_uri: str, experiment: str) -> None:
    """Import MLflow and open its store and the experiment in a thread, for
    :func:`store_opened_meanwhile` to wait for; ``gptops run`` calls it while its Prefect server
    boots. A SQLite database that does not exist yet is not made here (only the imports): a run
    whose data stages fail leaves none. Errors are left for the first real use to raise."""
    key = (tracking_uri, experiment)
    if key in _OPENING:
        return
    db = sqlite_path(tracking_uri)
    new = db is not None and not db.exists()

    def warm() -> None:
        with contextlib.suppress(Exception):
            if new:
                import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
                import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
                return
            experiment_id(tracking_uri, experiment)
            client(tracking_uri).search_registered_models(max_results=1)

    _OPENING[key] = threading.Thread(target=warm, name="gptops-mlflow-store", daemon=True)
    _OPENING[key].start()


@contextmanager
def store_opened_meanwhile(tracking_uri: str, experiment: str) -> Iterator[None]:
    """The store opened (:func:`open_store_soon`, unless begun already) while the block runs
    (the data stages: this process mostly waits for their commands); waited for when the block
    ends, not when it raises (a stop must end at once)."""
    open_store_soon(tracking_uri, experiment)
    try:
        yield
    finally:
        thread = _OPENING.pop((tracking_uri, experiment), None)
    if thread is not None:
        thread.join()


@dataclass(frozen=True)
class Tracking:
    """Where a pipeline run's MLflow runs go: the store, the experiment, the parent run.

    Plain data, so it crosses process and Prefect task boundaries.
    """

    uri: str
    experiment: str
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def _create_run(t: Tracking, name: str, tags: dict[str, str]) -> str:
    all_tags = {**t.tags, **tags}
    if t.parent_run_id:
        all_tags[PARENT_TAG] = t.parent_run_id
    url = all_tags.get(FLOW_RUN_URL)
    if url:  # a tag's value is plain text in the MLflow UI; the description is markdown
        all_tags.setdefault(NOTE_TAG, f"Prefect flow run: [{url}]({url})")
    run = client(t.uri).create_run(experiment_id(t.uri, t.experiment), run_name=name,
                                   tags={k: str(v) for k, v in all_tags.items() if v is not None})
    return run.info.run_id


#: The tag naming the workspace (host:path) every run of a pipeline or step carries.
WORKSPACE_TAG = "gptops.workspace"


def workspace_id(workdir: Path | str) -> str:
    return f"{socket.gethostname()}:{Path(workdir).resolve()}"


def mark_stale_runs(tracking: Tracking, workspace: str) -> list[str]:
    """Runs of ``workspace`` still RUNNING: left by a killed process, since the caller holds the
    workspace (one pipeline at a time). Marked KILLED; their names are returned."""
    c = client(tracking.uri)
    try:
        exp = c.get_experiment_by_name(tracking.experiment)
    except Exception:  # noqa: BLE001 - no store or experiment yet
        return []
    if exp is None:
        return []
    value = workspace.replace("'", "\\'")
    runs = c.search_runs([exp.experiment_id], max_results=1000, filter_string=(
        f"tags.`{WORKSPACE_TAG}` = '{value}' and attributes.status = 'RUNNING'"))
    for run in runs:
        c.set_terminated(run.info.run_id, status="KILLED")
    names = [r.info.run_name for r in runs]
    if names:
        log.warning("marked %d MLflow run(s) left RUNNING by a killed run of this workspace as "
                    "KILLED: %s", len(names), ", ".join(names))
    return names


@contextmanager
def pipeline_run(tracking: Tracking, name: str, workspace: str = "") -> Iterator[Tracking]:
    """The parent run of one pipeline run: FINISHED at the end, FAILED if anything raised
    (KILLED if stopped by SIGTERM/SIGINT).

    ``workspace`` (:func:`workspace_id`, when the caller holds the workspace's lock): first mark
    the runs a killed run of it left RUNNING as KILLED; every run of this one is tagged with it.
    """
    if workspace:
        mark_stale_runs(tracking, workspace)
        tracking = replace(tracking, tags={**tracking.tags, WORKSPACE_TAG: workspace})
    run_id = _create_run(replace(tracking, parent_run_id=None), name, {"gptops.run": "pipeline"})
    try:
        yield replace(tracking, parent_run_id=run_id)
    except BaseException as exc:
        finish_run(tracking.uri, run_id, ended_status(exc))
        raise
    finish_run(tracking.uri, run_id)


def cli_run_name(command: str) -> str:
    """The parent run's name for a library command (no Prefect flow run to name it after)."""
    return f"cli-{command}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass(frozen=True)
class Dataset:
    """The data a run read: name, digest (the data version) and source (the DVC output)."""

    name: str
    digest: str
    source: str


@contextmanager
def child_run(tracking: Tracking, name: str, tags: dict[str, str], params: dict[str, Any],
              dataset: Dataset | None = None) -> Iterator[str]:
    """A nested run for one step: params and input dataset logged up front; FAILED on error
    (KILLED if stopped by SIGTERM/SIGINT)."""
    run_id = _create_run(tracking, name, tags)
    from mlflow.entities import Param

    flat = [Param(k, str(v)[:6000]) for k, v in params.items()]
    c = client(tracking.uri)
    for i in range(0, len(flat), 100):
        c.log_batch(run_id, params=flat[i:i + 100])
    if dataset is not None:
        log_dataset(tracking.uri, run_id, dataset)
    try:
        yield run_id
    except StoppedEarly as exc:  # on purpose (a pruned trial): KILLED, saying why
        c.set_tag(run_id, STOPPED_EARLY_TAG, capped(str(exc)))
        finish_run(tracking.uri, run_id, "KILLED")
        raise
    except BaseException as exc:
        finish_run(tracking.uri, run_id, ended_status(exc))
        raise
    finish_run(tracking.uri, run_id)


def log_dataset(tracking_uri: str, run_id: str, dataset: Dataset,
                context: str = "training") -> None:
    """Record ``dataset`` as the run's input (the Dataset column of the MLflow UI)."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    # MLflow generates its local-artifact source class at import time; find it by name.
    local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    source = local(Path(dataset.source).resolve().as_uri())
    meta = MetaDataset(source=source, name=dataset.name, digest=dataset.digest)
    entity = meta._to_mlflow_entity()
    client(tracking_uri).log_inputs(run_id, [DatasetInput(
        dataset=entity, tags=[InputTag(key="mlflow.data.context", value=context)])])


def ended_status(exc: BaseException) -> str:
    """The status of a run that ``exc`` ended: KILLED for a deliberate stop (SIGTERM, Ctrl-C),
    else FAILED."""
    return "KILLED" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "FAILED"


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(tracking_uri).set_terminated(run_id, status=status)


class MetricsLogger:
    """A training callback that sends metrics to MLflow in batches (not one call per scalar).

    Picklable (the client is rebuilt), so a launched rank 0 logs into the step's run itself.
    With ``checkpoints`` (:class:`gpt.registry.checkpoints.CheckpointModels`), each checkpoint
    the loop writes becomes a logged model holding that step's metrics.
    """

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "",
                 flush_every: int = 200, checkpoints: Any = None) -> None:
        self.uri = tracking_uri
        self.client = client(tracking_uri)
        self.run_id = run_id
        self.prefix = prefix
        self.flush_every = flush_every
        self.checkpoints = checkpoints
        self._pending: list = []
        self._last: list = []  # the newest step's metrics

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._last = [Metric(f"{self.prefix}{k}", float(v), now, step)
                      for k, v in metrics.items()
                      if isinstance(v, (int, float)) and math.isfinite(v)]
        self._pending.extend(self._last)
        if len(self._pending) >= self.flush_every:
            self.flush()

    def checkpoint(self, step: int, path: Path) -> None:
        """The loop wrote checkpoint ``path`` at ``step``: log it as a model (with
        ``checkpoints``), linked to the step's metrics. A failure is logged, never raised:
        training goes on, the checkpoint is on disk."""
        if self.checkpoints is None:
            return
        try:
            self.flush()
            self.checkpoints.log(step, path, [m for m in self._last if m.step == step])
        except Exception as exc:  # noqa: BLE001 - the store is down, full...: keep training
            log.warning("checkpoint %s not logged as an MLflow model: %s", Path(path).name,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "client": None, "_pending": [], "_last": []}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.client = client(self.uri)

    def flush(self) -> None:
        for i in range(0, len(self._pending), 1000):
            self.client.log_batch(self.run_id, metrics=self._pending[i:i + 1000])
        self._pending = []


@contextmanager
def system_metrics(tracking_uri: str, run_id: str, interval: float) -> Iterator[None]:
    """MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk, network;
    GPU with ``nvidia-ml-py``) sampled every ``interval`` seconds into ``run_id`` while the
    block runs (0: none). A block shorter than ``interval`` still logs one sample at its end."""
    if interval <= 0:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval,
                                   tracking_uri=tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        with contextlib.suppress(Exception):  # a lost store is the step's to report
            logged = client(tracking_uri).get_run(run_id).data.metrics
            if not any(k.startswith("system/") for k in logged):  # ended before a sample
                monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    logger = MetricsLogger(tracking_uri, run_id)
    logger(step, metrics)
    logger.flush()



def describe_pipeline_run(tracking_uri: str, run_id: str, description: str,
                          evaluation: dict[str, dict[str, Any]],
                          registered: dict[str, dict[str, Any]]) -> None:
    """The parent run of a pipeline run as its runs table should compare it: the run's summary
    as its description, and each model's headline metrics (``<kind>.<metric>``, per-class
    figures left out) and gate decision (``<kind>.champion`` 1/0) as its metrics."""
    metrics: dict[str, float] = {}
    for kind, e in evaluation.items():
        for name, value in e.get("metrics", {}).items():
            if not name.startswith(("precision_", "recall_", "f1_")) and \
                    isinstance(value, int | float) and math.isfinite(float(value)):
                metrics[f"{kind}.{name}"] = float(value)
    for kind, reg in registered.items():
        metrics[f"{kind}.champion"] = 1.0 if reg.get("champion") else 0.0
    client(tracking_uri).set_tag(run_id, NOTE_TAG, capped(description))
    log_metrics(tracking_uri, run_id, metrics)


def log_artifacts(tracking_uri: str, run_id: str, paths: dict[str, Path]) -> None:
    """Log files/folders under the given artifact sub-paths."""
    c = client(tracking_uri)
    for sub, path in paths.items():
        path = Path(path)
        if path.is_dir():
            c.log_artifacts(run_id, str(path), sub)
        elif path.is_file():
            c.log_artifact(run_id, str(path), sub)


def log_dict(tracking_uri: str, run_id: str, obj: Any, artifact_file: str) -> None:
    client(tracking_uri).log_dict(run_id, obj, artifact_file)


def log_table(tracking_uri: str, run_id: str, rows: list[dict[str, Any]],
              artifact_file: str) -> None:
    """Rows as an MLflow table artifact (rendered as a table in the run's artifact view)."""
    import pandas as pd

    client(tracking_uri).log_table(run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)
