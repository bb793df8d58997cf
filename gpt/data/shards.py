"""Sharded stage outputs: numbered parquet/token files, written resumably and atomically.

A data stage writes its shards into ``.<name>.partial`` next to its output folder. Each finished
shard gets a completion marker (``<shard>.done``, holding the shard's SHA-256), written after the
shard itself was renamed into place, so a half-written shard is never taken as complete. A stage
killed part-way and run again with the same inputs and parameters (the folder's ``fingerprint``)
skips the shards already done; other inputs start afresh. When every shard is done the markers
are removed and the folder is renamed to the output: the outputs are byte-identical to an
uninterrupted run's (as datatrove's completion markers do).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gpt.errors import DataError

#: Documents' parquet shards: ``part-00000.parquet`` ...
PART = "part-{:05d}.parquet"
MANIFEST = "manifest.json"
_FINGERPRINT = ".fingerprint"
_DONE = ".done"
SCRATCH = "_work"


def parts(directory: Path, prefix: str = "part-", suffix: str = ".parquet") -> list[Path]:
    """The shards ``<prefix>NNNNN<suffix>`` of a folder, in order."""
    found = [p for p in Path(directory).glob(f"{prefix}*{suffix}")
             if p.name[len(prefix):-len(suffix)].isdigit()]
    return sorted(found)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_parquet(table: pa.Table | pd.DataFrame, path: Path) -> None:
    """Write a parquet file under a temp name, then rename it into place."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_parts(directory: Path, stage: str, prefix: str = "part-",
               columns: list[str] | None = None) -> pd.DataFrame:
    """All shards of a folder as one frame (for small corpora and tests; stages stream)."""
    files = parts(directory, prefix)
    if not files:
        raise DataError(f"{directory} holds no {prefix}*.parquet shards; run the '{stage}' stage "
                        f"first (`gptops data {stage}`)")
    return pd.concat([read_part(f, stage, columns) for f in files], ignore_index=True)


def read_part(path: Path, stage: str, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
        raise DataError(f"{path} is corrupt ({exc}); re-run `gptops data {stage}`") from exc


class ShardedOutput:
    """The partial folder of a stage's output, with its completed shards.

    Use :func:`sharded_output`; ``path`` is where shards go, ``done(name)`` says whether a shard
    is complete, ``complete(name)`` marks it so (after it was written under its final name).
    """

    def __init__(self, path: Path, resumed: list[str]) -> None:
        self.path = path
        self.resumed = resumed
        #: Intermediate files (removed before the folder becomes the output).
        self.scratch = path / SCRATCH
        self.scratch.mkdir(exist_ok=True)

    def done(self, name: str) -> bool:
        """True when ``name`` was completed (its marker exists and its bytes match it)."""
        return is_done(self.path / name)

    def complete(self, name: str) -> None:
        mark_done(self.path / name)


def _marker(path: Path) -> Path:
    return path.with_name(f"{path.name}{_DONE}")


def is_done(path: Path) -> bool:
    """True when the file ``path`` was completed (``mark_done``) and is unchanged since."""
    marker = _marker(Path(path))
    if not marker.is_file() or not Path(path).is_file():
        return False
    return marker.read_text().strip() == sha256_file(path)


def mark_done(path: Path) -> None:
    """Mark the file ``path`` complete (written in full under its final name); a worker process
    may call this for the shards it wrote."""
    marker = _marker(Path(path))
    tmp = marker.with_name(f".{marker.name}.tmp-{os.getpid()}")
    tmp.write_text(sha256_file(path))
    os.replace(tmp, marker)


def fingerprint(*parts_: Any) -> str:
    """A hash of a stage's inputs and parameters (JSON-serialisable values)."""
    return hashlib.sha256(json.dumps(parts_, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def sharded_output(final: Path, print_: str) -> Iterator[ShardedOutput]:
    """A resumable partial folder that replaces ``final`` when the block succeeds.

    Args:
        final: the stage's output folder (e.g. ``data/clean``).
        print_: the fingerprint of the stage's inputs and parameters: a partial folder with
            another one (or none) is discarded, one with the same is resumed.

    One process at a time holds a partial folder (a lock file next to it); a second waits.
    On failure (or a kill) the partial folder stays, to be resumed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial")
    with open(final.with_name(f".{final.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = partial / _FINGERPRINT
        if partial.exists() and (not stamp.is_file() or stamp.read_text() != print_):
            shutil.rmtree(partial)
        partial.mkdir(exist_ok=True)
        for tmp in partial.glob(".*.tmp-*"):  # half-written files of a killed run
            tmp.unlink(missing_ok=True)
        stamp.write_text(print_)
        resumed = sorted(p.name[:-len(_DONE)] for p in partial.rglob(f"*{_DONE}"))
        yield ShardedOutput(partial, resumed)
        for p in [*partial.glob(f"*{_DONE}"), stamp]:
            p.unlink()
        shutil.rmtree(partial / SCRATCH, ignore_errors=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
