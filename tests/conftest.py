"""Shared fixtures: one real Prefect server per test session, small real workspaces."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: Small but real: a slice of the built-in corpus spread over all packages, short training.
SMALL = [
    "data.max_docs=1800", "tokenizer.vocab_size=1024", "model.n_layer=2", "model.n_embd=64",
    "model.n_head=2", "model.block_size=64", "train.max_steps=30", "train.eval_interval=15",
    "train.eval_batches=4", "train.checkpoints=2", "finetune.max_steps=60",
    "finetune.warmup_steps=5", "finetune.lr=0.003", "finetune.base_lr_factor=1.0",
    "sft.max_steps=30", "sft.warmup_steps=5", "sft.max_new_tokens=8",
    "evaluate.ppl_batches=4", "evaluate.max_items=8",  # SFT pairs and benchmark items
]


def pytest_collection_modifyitems(config, items) -> None:
    """Files holding slow tests first, each file's tests in their own order: pytest-xdist's
    ``--dist loadfile`` hands out files in this order, so the long ones start early and the
    many short files fill the workers at the end (instead of one long file running alone)."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    first = {}
    for i, item in enumerate(items):
        first.setdefault(item.path, i)
    items.sort(key=lambda item: (item.path not in slow, first[item.path]))


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (SQLite, temp home) for the whole session."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def data_config(source: str, **changes: object):
    """params.yaml's ``data`` section (its defaults) reading ``source``, with ``changes``."""
    from gpt.config import PROJECT_PARAMS, load_params

    data = load_params(PROJECT_PARAMS).data
    return type(data).model_validate({**data.model_dump(), "source": source, **changes})


#: Made once per session by the first make_workspace: what every new workspace starts as.
_BLANK: dict[str, Path] = {}


def _session_folder(prefix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def migrated_prefect_db() -> Path:
    """An empty Prefect database at the current schema: the environment's own
    (:func:`flows.server.make_blank_database`, which scripts/setup.sh makes and every new
    workspace's first run copies)."""
    from flows.server import make_blank_database

    path = make_blank_database()
    assert path is not None, "could not make an empty Prefect database (see the log above)"
    return path


def _blank_workspace() -> Path:
    """``git init`` + :func:`gpt.dvc_repo.ensure_workspace` once per session, with the Prefect
    database a new workspace's first run gets (:func:`flows.server.new_database`: the blank
    copy, and the mark that lets its server skip registering block types)."""
    if "ws" not in _BLANK:
        from flows.server import new_database
        from gpt.dvc_repo import ensure_workspace
        from gpt.layout import Workspace

        path = _session_folder("gptops-blank-ws-") / "ws"
        path.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=path, check=True)
        layout = Workspace(ensure_workspace(path))
        layout.state.mkdir(exist_ok=True)
        assert not new_database(layout.prefect_db, layout.prefect_home), \
            "could not make an empty Prefect database (see the log above)"
        _BLANK["ws"] = layout.root
    return _BLANK["ws"]


def make_workspace(path: Path, overrides: list[str] | None = None) -> Path:
    """A git repo + DVC workspace at ``path`` with params.yaml's data sections overridden.

    A copy of one made once per session. Its Prefect database (``.gptops/prefect.db``) is
    already created and migrated, as after a workspace's first run: the first start on a new
    database is tested on fresh clones (tests/e2e/test_first_run.py), not in every test.
    """
    from gpt.params_file import apply_data_overrides

    shutil.copytree(_blank_workspace(), path, symlinks=True, dirs_exist_ok=True)
    ws = path.resolve()
    apply_data_overrides(ws, overrides or [])
    return ws


DATA_OVERRIDES = [o for o in SMALL if o.split(".")[0] in ("data", "clean", "tokenizer")]
RUN_OVERRIDES = [o for o in SMALL if o not in DATA_OVERRIDES]


@pytest.fixture(scope="session")
def data_ready(tmp_path_factory) -> Callable[[Path], Path]:
    """Copies of one small workspace whose data stages have run: ``data_ready(path)``.

    For tests of what comes after the data (training, faults, the registry): the data stages
    run once per session (``dvc repro``, as a user would), not once per test. A ``gptops run``
    in a copy finds them unchanged (DVC), versions the data and goes on to training. Tests of
    the data stages themselves make their own workspace (:func:`make_workspace`).
    """
    template = make_workspace(tmp_path_factory.mktemp("data-ready") / "ws", DATA_OVERRIDES)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=template,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def copy(path: Path) -> Path:
        shutil.copytree(template, path, symlinks=True)
        return path

    return copy


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, prefect_server):
    """The real flow run twice on one small workspace (the second run must reuse everything)."""
    from flows.pipeline import training_pipeline

    ws = make_workspace(tmp_path_factory.mktemp("ws"), DATA_OVERRIDES)
    first = training_pipeline(overrides=RUN_OVERRIDES, workdir=str(ws))
    second = training_pipeline(overrides=RUN_OVERRIDES, workdir=str(ws))
    return ws, first, second


@dataclass(frozen=True)
class PostgresDB:
    """A database on the test PostgreSQL server (127.0.0.1:5432, trust auth, user postgres)."""

    name: str
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"

    @property
    def conninfo(self) -> str:
        """libpq conninfo, for ``psycopg.connect``."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.name}"

    def url(self, driver: str = "psycopg") -> str:
        """SQLAlchemy URL: ``psycopg`` (MLflow) or ``asyncpg`` (Prefect)."""
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{self.name}"


@pytest.fixture()
def postgres_db():
    """A fresh PostgreSQL database (dropped afterwards). Missing PostgreSQL = failure, not skip."""
    import uuid

    import psycopg

    db = PostgresDB(f"gptops_test_{uuid.uuid4().hex[:8]}")
    admin_info = PostgresDB("postgres").conninfo
    with psycopg.connect(admin_info, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db.name}"')
        try:
            yield db
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


@pytest.fixture()
def postgres_uri(postgres_db):
    """``postgres_db`` as the SQLAlchemy/MLflow URI (postgresql+psycopg://...)."""
    return postgres_db.url("psycopg")
