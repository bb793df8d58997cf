"""A new workspace's MLflow store starts as a copy of the environment's empty one.

MLflow creates a SQLite store by running every schema migration since its first (~1 s idle, at
each new workspace's first run, and in every test that makes a workspace). ``scripts/setup.sh``
(or the first new store) makes one empty database at the installed MLflow's schema; a store that
does not exist yet gets a copy when the first client opens it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from importlib.metadata import version

from gpt.registry.tracking import blank_store, client, experiment_id, make_blank_store
from tests.conftest import PROJECT_ROOT


def _schema(db) -> tuple[str, dict[str, object]]:
    """The alembic head, and each table's columns, foreign keys and indexes, order aside (the
    CREATE statements MLflow's migrations write list some of them in hash order, which differs
    between two processes)."""
    with sqlite3.connect(db) as con:
        (head,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        shape = {t: (sorted(con.execute(f'PRAGMA table_info("{t}")').fetchall()),
                     sorted(r[2:] for r in con.execute(f'PRAGMA foreign_key_list("{t}")')),
                     sorted((r[1], r[2]) for r in con.execute(f'PRAGMA index_list("{t}")')
                            if not r[1].startswith("sqlite_autoindex")))
                 for t in tables}
    return head, shape


def test_a_seeded_store_has_mlflows_own_schema_and_works(tmp_path):
    blank = make_blank_store()
    assert blank is not None and blank == blank_store() and blank.is_file()
    assert blank.name == f"mlflow-{version('mlflow')}.db"

    # The oracle: a store MLflow creates itself, in another process (no seeding there).
    own = tmp_path / "own.db"
    code = ("from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as T;"
            "from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as R;"
            f"u='sqlite:///{own}'; T(u, '{tmp_path.as_uri()}'); R(u)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)

    ws = tmp_path / "ws" / ".gptops"
    ws.mkdir(parents=True)
    uri = f"sqlite:///{ws / 'mlflow.db'}"
    c = client(uri)
    assert (ws / "mlflow.db").is_file()
    assert _schema(ws / "mlflow.db") == _schema(own)

    exp = experiment_id(uri, "e")
    run = c.create_run(exp)
    c.log_metric(run.info.run_id, "m", 1.5)
    c.create_registered_model("m")
    c.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id)
    assert [str(v.version) for v in c.search_model_versions("name='m'")] == ["1"]
    assert c.get_run(run.info.run_id).data.metrics == {"m": 1.5}
    # Every location is this workspace's, none the blank's (a copied workspace is repointed by
    # replacing its root: a foreign path would stay behind).
    default = c.get_experiment("0")
    assert default.artifact_location == (ws / "mlartifacts" / "0").as_uri()
    with sqlite3.connect(ws / "mlflow.db") as con:
        dumped = "\n".join(con.iterdump())
    assert str(blank.parent) not in dumped and ".mlflow-db-" not in dumped


def test_an_existing_store_is_never_replaced_and_two_processes_seed_one(tmp_path):
    make_blank_store()
    ws = tmp_path / ".gptops"
    ws.mkdir()
    db = ws / "mlflow.db"
    uri = f"sqlite:///{db}"
    code = ("import sys; from gpt.registry.tracking import client, experiment_id;"
            "experiment_id(sys.argv[1], sys.argv[2])")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, f"e{i}"], env=env)
             for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    names = {e.name for e in client(uri).search_experiments()}
    assert names == {"Default", "e0", "e1"}  # both wrote into the one store
    before = db.read_bytes()
    client(uri).search_experiments()
    assert db.read_bytes() == before
    assert not list(ws.glob(".*.tmp"))
