"""Watching a local ``data.source`` for new, changed and removed files, with a quiet period.

:class:`SourceWatch` looks at the files the source names (:func:`gpt.data.sources.local_paths`:
globs and folders) each time it is polled, and announces what changed once the files were left
alone for ``quiet_s`` seconds, so a copy of many files is one change. What it last announced is
kept in the workspace (``.gptops/watch.json``): a change made while nobody watched is announced
at the next start. ``builtin`` and ``hf:`` sources are not files: nothing to watch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gpt.config import HF_PREFIX
from gpt.errors import DataError
from gpt.layout import Workspace

Snapshot = dict[str, tuple[int, int]]


def watchable(source: str) -> bool:
    """True for a local source (a glob or folder), the only kind with files to watch."""
    return bool(source.strip()) and source != "builtin" and not source.startswith(HF_PREFIX)


def snapshot(source: str) -> Snapshot:
    """Each file of ``source`` with its size and modification time (no file: empty)."""
    from gpt.data.sources import local_paths

    try:
        paths = local_paths(source)
    except DataError:  # matches no files (yet)
        return {}
    out: Snapshot = {}
    for p in paths:
        try:
            st = p.stat()
        except OSError:  # removed between the glob and the stat
            continue
        out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


@dataclass(frozen=True)
class Change:
    """Files that appeared or changed, and files that went, since the last announcement."""

    files: list[str]
    removed: list[str]

    @property
    def summary(self) -> str:
        """One line: ``2 new or changed files (a.jsonl, b.jsonl)``."""
        parts = []
        for what, names in (("new or changed", self.files), ("removed", self.removed)):
            if names:
                shown = ", ".join(Path(n).name for n in names[:5])
                more = f" and {len(names) - 5} more" if len(names) > 5 else ""
                parts.append(f"{len(names)} {what} file{'s' * (len(names) != 1)} "
                             f"({shown}{more})")
        return "; ".join(parts)


def diff(old: Snapshot, new: Snapshot) -> Change:
    """What differs between two snapshots."""
    return Change(sorted(p for p, st in new.items() if old.get(p) != tuple(st)),
                  sorted(p for p in old if p not in new))


@dataclass
class SourceWatch:
    """The files of ``source``, polled; ``poll`` returns a :class:`Change` once it is quiet."""

    source: str
    quiet_s: float
    state: Path  #: where the last announced snapshot is kept
    announced: Snapshot = field(default_factory=dict)
    seen: Snapshot = field(default_factory=dict)
    last_change: float | None = None

    @classmethod
    def open(cls, workdir: Path, source: str, quiet_s: float, now: float) -> SourceWatch:
        """The watch of ``workdir``'s source: from its saved state, else from the files now."""
        path = Workspace(Path(workdir)).watch_state
        saved = None
        if path.is_file():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                if raw.get("source") == source:
                    saved = {k: tuple(v) for k, v in raw["files"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                saved = None  # unreadable: start from the files as they are
        w = cls(source, quiet_s, path)
        if saved is None:
            w.announced = w.seen = snapshot(source)
            w._save()
        else:
            w.announced = w.seen = saved
        w.last_change = now
        return w

    def poll(self, now: float) -> Change | None:
        """Look at the files; the change since the last announcement once they were left alone
        for ``quiet_s`` (and it is not empty), else None."""
        current = snapshot(self.source)
        if current != self.seen:
            self.seen, self.last_change = current, now
        if self.seen == self.announced or self.last_change is None:
            return None
        if now - self.last_change < self.quiet_s:
            return None
        change = diff(self.announced, self.seen)
        self.announced = self.seen
        self._save()
        return change

    def _save(self) -> None:
        self.state.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state.with_name(f".{self.state.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"source": self.source, "files": self.announced}),
                       encoding="utf-8")
        os.replace(tmp, self.state)
