"""A new workspace's Prefect database starts as a copy of the environment's blank one.

Before: every new workspace's first ``gptops run`` waited while its Prefect server created and
migrated a database (~10 s of a 3-minute default run on an idle 2-core machine; the issue's
overhead target is 5 %). Now ``scripts/setup.sh`` (or the first new workspace) makes one blank
database at the installed Prefect's schema, and each new workspace gets a copy.
"""

from __future__ import annotations

import sqlite3
from importlib.metadata import version

from flows.server import (
    BLOCKS_MARK,
    blank_database,
    make_blank_database,
    new_database,
    skip_known_blocks,
)


def _schema(db) -> tuple[str, int]:
    with sqlite3.connect(db) as con:
        (head,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
        (tables,) = con.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()
    return head, tables


def test_a_new_workspace_gets_the_blank_database_and_an_existing_one_is_kept(tmp_path):
    blank = make_blank_database()
    assert blank is not None and blank == blank_database() and blank.is_file()
    assert blank.name.startswith(f"prefect-{version('prefect')}-")
    head, tables = _schema(blank)
    assert tables > 20  # Prefect's whole schema, not an empty file

    db = tmp_path / ".gptops" / "prefect.db"
    db.parent.mkdir()
    assert new_database(db, tmp_path / "home") is False  # nothing left for the server to create
    assert _schema(db) == (head, tables)
    with sqlite3.connect(db) as con:  # a workspace's own history...
        con.execute("CREATE TABLE mine (x)")
    assert new_database(db, tmp_path / "home") is False
    with sqlite3.connect(db) as con:  # ...is never replaced by the blank copy
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name='mine'").fetchone()[0]
    assert not list(db.parent.glob(".*.tmp"))
    # The home's mark that the copy's block types are this environment's: its server need not
    # register them again.
    env: dict[str, str] = {}
    skip_known_blocks(env, tmp_path / "home")
    assert env == {"PREFECT_API_BLOCKS_REGISTER_ON_START": "false"}
    (tmp_path / "home" / BLOCKS_MARK).write_text("3.0.0-another\n")  # Prefect upgraded since
    env.clear()
    skip_known_blocks(env, tmp_path / "home")
    assert env == {}
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM block_type").fetchone()[0] > 5
