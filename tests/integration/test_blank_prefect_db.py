"""A new workspace's Prefect database starts as a copy of the environment's blank one.

Before: every new workspace's first ``gptops run`` waited while its Prefect server created and
migrated a database (~10 s of a 3-minute default run on an idle 2-core machine; the issue's
overhead target is 5 %). Now ``scripts/setup.sh`` (or the first new workspace) makes one blank
database at the installed Prefect's schema, and each new workspace gets a copy.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import urllib.error
import urllib.request
from importlib.metadata import entry_points, version

from flows.server import (
    BLOCKS_MARK,
    _server_cmd,
    blank_database,
    database_url,
    free_port,
    make_blank_database,
    new_database,
    prefect_env,
    skip_known_blocks,
    skip_known_schema,
    stop_group,
    wait_http,
)


def _post(url: str, body: dict) -> object:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - local URL
            return json.load(r)
    except urllib.error.HTTPError as exc:  # the server's own words, not only the status
        raise AssertionError(f"POST {url}: {exc.code} {exc.read()[:2000]!r}") from None


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
    assert env == {"PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
                   "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}
    (tmp_path / "home" / BLOCKS_MARK).write_text("3.0.0-another\n")  # Prefect upgraded since
    env.clear()
    skip_known_blocks(env, tmp_path / "home")
    assert env == {}
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM block_type").fetchone()[0] > 5
    # The copy is at the installed Prefect's schema: its server need not migrate it. A database
    # at another revision (an older Prefect's, a restored backup) or none at all is migrated.
    skip_known_schema(env, db)
    assert env == {"PREFECT_API_DATABASE_MIGRATE_ON_START": "false"}
    older = tmp_path / "older.db"
    older.write_bytes(db.read_bytes())
    with sqlite3.connect(older) as con:
        con.execute("UPDATE alembic_version SET version_num = 'a0a0a0a0a0a0'")
    for other in (older, tmp_path / "missing.db"):
        env.clear()
        skip_known_schema(env, other)
        assert env == {}, other


def test_a_server_on_a_known_copy_starts_without_importing_prefects_collections(tmp_path):
    """The server of a workspace whose block types are known neither registers them nor imports
    the installed collections (prefect-dask, prefect-kubernetes) to find out, and the server of
    a database at the installed schema does not run Alembic: Python's own import log of that
    server says so. Its API still lists the copy's block types and records a flow run."""
    collections = {e.value.split(":")[0] for e in entry_points(group="prefect.collections")}
    assert collections, "no Prefect collection installed: nothing to check"
    ws, home = tmp_path / "ws", tmp_path / "ws" / ".gptops" / "prefect-home"
    db = ws / ".gptops" / "prefect.db"
    db.parent.mkdir(parents=True)
    assert new_database(db, home) is False
    port = free_port()
    env = prefect_env("127.0.0.1", port, database_url(ws), home)
    skip_known_blocks(env, home)
    skip_known_schema(env, db)
    env["PYTHONPROFILEIMPORTTIME"] = "1"  # every import, to the server's stderr
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(_server_cmd(port), env=env, cwd=ws, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            api = f"http://127.0.0.1:{port}/api"
            wait_http(f"{api}/health", proc, "the Prefect server", timeout=120)
            assert len(_post(f"{api}/block_types/filter", {})) > 5
            flow = _post(f"{api}/flows/", {"name": "known-copy"})
            run = _post(f"{api}/flow_runs/", {"flow_id": flow["id"], "name": "r1"})
            assert _post(f"{api}/flow_runs/filter", {})[0]["id"] == run["id"]
        finally:
            stop_group(proc)
    # Python logs each module once its import is done (a collection that fails to import
    # leaves only its submodules' lines).
    imported = {line.rsplit("|", 1)[-1].strip() for line in log.read_text().splitlines()
                if line.startswith("import time:")}
    assert "prefect.server.api.server" in imported  # the log does list the server's imports
    loaded = {name for name in imported if name.split(".")[0] in collections | {"alembic"}}
    assert not loaded, sorted(loaded)[:10]
