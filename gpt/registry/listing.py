"""A light read of a SQLite model registry, for `gptops models` (well under a second).

``MlflowClient`` on a SQLite store imports MLflow, builds a SQLAlchemy engine and checks the
schema's migration head before its first query: about 3 s idle, 7–10 s on a busy machine, to list
a handful of rows. A workspace's registry is a SQLite file, so it is read here directly, read-only,
through MLflow's own tables (``registered_models``, ``model_versions``, ``model_version_tags``,
``registered_model_aliases``, ``registered_model_tags``). Anything else (a server, PostgreSQL, a
schema that does not have these tables) goes through ``MlflowClient`` as before; a test holds the
two readers to the same rows.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: MLflow's marker for a soft-deleted model version (``mlflow.entities.model_registry``).
_DELETED = "Deleted_Internal"
#: MLflow 3.x stores carry a ``workspace`` column; a client outside a named workspace reads this.
_WORKSPACE = "default"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    return path if path.is_absolute() else Path.cwd() / path


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[tuple[sqlite3.Connection, str]]:
    """A read-only connection, and the SQL that keeps the default MLflow workspace's rows."""
    if os.environ.get("MLFLOW_WORKSPACE", _WORKSPACE) != _WORKSPACE:
        raise sqlite3.OperationalError("a named MLflow workspace: read through MLflow")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        columns = {row[1] for row in con.execute("PRAGMA table_info(model_versions)")}
        yield con, (f"workspace = '{_WORKSPACE}'" if "workspace" in columns else "1 = 1")
    finally:
        con.close()


def read_versions(path: Path, name: str | None = None) -> list[dict[str, Any]] | None:
    """Every live version (name, version, aliases, run_id, tags), sorted; None = unreadable here.

    A missing file is an empty registry (nothing is created).
    """
    if not path.is_file():
        return []
    try:
        with _read_only(path) as (con, ws):
            where, args = ("AND name = ?", (name,)) if name else ("", ())
            versions = con.execute(
                "SELECT name, version, run_id FROM model_versions "
                f"WHERE {ws} AND current_stage != ? {where}", (_DELETED, *args)).fetchall()
            tags: dict[tuple[str, int], dict[str, str]] = {}
            for n, v, key, value in con.execute(
                    f"SELECT name, version, key, value FROM model_version_tags WHERE {ws}"):
                tags.setdefault((n, int(v)), {})[key] = value
            aliases: dict[tuple[str, int], list[str]] = {}
            for n, alias, v in con.execute(
                    f"SELECT name, alias, version FROM registered_model_aliases WHERE {ws}"):
                aliases.setdefault((n, int(v)), []).append(alias)
    except sqlite3.Error:
        return None
    rows = [{"name": n, "version": str(v), "aliases": sorted(aliases.get((n, int(v)), [])),
             "run_id": run_id, "tags": tags.get((n, int(v)), {})}
            for n, v, run_id in versions]
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))


def read_model_tags(path: Path) -> dict[str, dict[str, str]] | None:
    """Every registered model's tags, by model name; None = unreadable here."""
    if not path.is_file():
        return {}
    try:
        with _read_only(path) as (con, ws):
            out: dict[str, dict[str, str]] = {n: {} for (n,) in con.execute(
                f"SELECT name FROM registered_models WHERE {ws}")}
            for n, key, value in con.execute(
                    f"SELECT name, key, value FROM registered_model_tags WHERE {ws}"):
                out.setdefault(n, {})[key] = value
    except sqlite3.Error:
        return None
    return out


def read_storage_location(path: Path, name: str, version: str) -> str | None:
    """Where a live version's files are (``model_versions.storage_location``); None = unknown."""
    try:
        with _read_only(path) as (con, ws):
            row = con.execute(
                "SELECT storage_location FROM model_versions "
                f"WHERE {ws} AND current_stage != ? AND name = ? AND version = ?",
                (_DELETED, name, int(version))).fetchone()
    except (sqlite3.Error, ValueError):
        return None
    return row[0] if row and row[0] else None
