"""Shared fixtures: one real Prefect server per test session, small real workspaces."""

from __future__ import annotations

import os
import subprocess
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
    "sft.max_steps=30", "sft.warmup_steps=5", "sft.eval_examples=10",
    "sft.max_new_tokens=8",
    "evaluate.ppl_batches=4", "evaluate.benchmark_limit=8",
]


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


def make_workspace(path: Path, overrides: list[str] | None = None) -> Path:
    """A git repo + DVC workspace at ``path`` with params.yaml's data sections overridden."""
    from gpt.workspace import apply_data_overrides, ensure_workspace

    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    ws = ensure_workspace(path)
    apply_data_overrides(ws, overrides or [])
    return ws


DATA_OVERRIDES = [o for o in SMALL if o.split(".")[0] in ("data", "clean", "tokenizer")]
RUN_OVERRIDES = [o for o in SMALL if o not in DATA_OVERRIDES]


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
