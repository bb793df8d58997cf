"""Watching ``data.source`` for changes, with a quiet period.

:class:`SourceWatch` takes a :func:`snapshot` of the source each time it is polled, and
announces what changed once the source was left alone for ``quiet_s`` seconds, so a copy of many
files is one change. What a snapshot holds depends on the source:

- a local glob or folder, or ``hf:<folder>`` written by ``save_to_disk``: each file with its
  size and modification time;
- ``hf:<hub dataset>``: the dataset's revision on the hub (its commit sha, from
  ``HfApi().dataset_info``): a network call, so :func:`remote` sources are polled less often. A
  check that fails (offline, the hub down) is one warning per outage, never an event, and the
  first check that works again is compared with the last revision announced;
- ``builtin``: nothing to watch.

What the watcher last announced is kept in the workspace (``.gptops/watch.json``): a change
made while nobody watched is announced at the next start. The ingest stage keeps the files it
read the same way (:func:`save_ingest`), so ``gptops run`` can say that the source changed
since (:func:`unread_change`): DVC does not track a local source's files.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from gpt.config import HF_PREFIX, DataConfig
from gpt.errors import DataError
from gpt.layout import Workspace

log = logging.getLogger(__name__)

#: Each file's ``(size, mtime_ns)``, or a hub dataset's ``(revision,)`` under the source's name.
Snapshot = dict[str, tuple[int | str, ...]]


class PollError(DataError):
    """The source could not be looked at (the hub unreachable, offline mode)."""


def _hf(source: str) -> tuple[str, bool] | None:
    """``(name, local)`` of an ``hf:`` source; None for any other source or a malformed one."""
    from gpt.data.sources import hf_dataset

    if not source.startswith(HF_PREFIX):
        return None
    try:
        name, _split, local = hf_dataset(source.removeprefix(HF_PREFIX))
    except DataError:
        return None
    return name, local


def watchable(source: str) -> bool:
    """True for a source that can change: local files, an ``hf:`` folder or hub dataset."""
    if not source.strip() or source == "builtin":
        return False
    return not source.startswith(HF_PREFIX) or _hf(source) is not None


def remote(source: str) -> bool:
    """True for an ``hf:`` hub dataset: its revision is a network call."""
    found = _hf(source)
    return found is not None and not found[1]


def hub_revision(name: str) -> str:
    """The commit sha of the hub dataset ``name`` (``HF_ENDPOINT``; ``HF_HUB_OFFLINE`` refuses).

    Raises:
        PollError: the hub could not be asked, or gave no revision.
    """
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(name).sha
    except Exception as exc:  # noqa: BLE001 - offline, DNS, HTTP, an unknown dataset: all a miss
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise PollError(f"cannot check the revision of {HF_PREFIX}{name} on the hub "
                        f"({type(exc).__name__}: {first})") from exc
    if not sha:
        raise PollError(f"the hub gave no revision for {HF_PREFIX}{name}")
    return sha


def _files(pattern: str) -> Snapshot:
    from gpt.data.sources import local_paths

    try:
        paths = local_paths(pattern)
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


def snapshot(source: str) -> Snapshot:
    """What ``source`` is now: its files (none yet: empty), or its hub revision.

    Raises:
        PollError: a hub dataset whose revision could not be checked.
    """
    found = _hf(source)
    if found is None:
        return _files(source)
    name, local = found
    return _files(name) if local else {source: (hub_revision(name),)}


@dataclass(frozen=True)
class Change:
    """Files that appeared or changed, and files that went, since the last announcement; for a
    hub dataset, its name in ``files`` and its new ``revision``."""

    files: list[str]
    removed: list[str]
    revision: str = ""

    @property
    def summary(self) -> str:
        """One line: ``2 new or changed files (a.jsonl, b.jsonl)``, or
        ``hf:org/name at revision 3f2a...``."""
        if self.revision:
            return f"{', '.join(self.files)} at revision {self.revision}"
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
    files = sorted(p for p, st in new.items() if old.get(p) != tuple(st))
    revision = next((str(new[p][0]) for p in files if p.startswith(HF_PREFIX)), "")
    return Change(files, sorted(p for p in old if p not in new), revision)


def _load(path: Path, source: str) -> Snapshot | None:
    """The snapshot saved at ``path`` for ``source``; None if absent, unreadable or another
    source's."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("source") != source:
            return None
        return {k: tuple(v) for k, v in raw["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _save(path: Path, source: str, files: Snapshot) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"source": source, "files": files}), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class SourceWatch:
    """``source``, polled; ``poll`` returns a :class:`Change` once it is quiet."""

    source: str
    quiet_s: float
    state: Path  #: where the last announced snapshot is kept
    #: The last announced snapshot; None until the source could be looked at once.
    announced: Snapshot | None = None
    seen: Snapshot = field(default_factory=dict)
    last_change: float | None = None
    #: Why the last look failed (a hub outage), None when it worked.
    outage: str | None = None

    @classmethod
    def open(cls, workdir: Path, source: str, quiet_s: float, now: float) -> SourceWatch:
        """The watch of ``workdir``'s source: from its saved state, else from the source now
        (a hub that does not answer: from the first look that works)."""
        w = cls(source, quiet_s, Workspace(Path(workdir)).watch_state)
        saved = _load(w.state, source)
        if saved is None:
            saved = w._look()
            if saved is not None:
                _save(w.state, source, saved)
        if saved is not None:
            w.announced, w.seen = saved, dict(saved)
        w.last_change = now
        return w

    def poll(self, now: float) -> Change | None:
        """Look at the source; the change since the last announcement once it was left alone
        for ``quiet_s`` (and it is not empty), else None (also when the look failed)."""
        current = self._look()
        if current is None:
            return None
        if self.announced is None:  # the first look that worked: what "unchanged" is
            self.announced, self.seen, self.last_change = current, dict(current), now
            _save(self.state, self.source, current)
            return None
        if current != self.seen:
            self.seen, self.last_change = current, now
        if self.seen == self.announced or self.last_change is None:
            return None
        if now - self.last_change < self.quiet_s:
            return None
        change = diff(self.announced, self.seen)
        self.announced = self.seen
        _save(self.state, self.source, self.announced)
        return change

    def _look(self) -> Snapshot | None:
        """The source's snapshot, or None when it cannot be looked at: one warning per outage."""
        try:
            current = snapshot(self.source)
        except PollError as exc:
            if self.outage is None:
                log.warning("%s; no event until it answers (retrying quietly)", exc)
            self.outage = str(exc)
            return None
        if self.outage is not None:
            log.warning("%s answers again: watching it", self.source)
            self.outage = None
        return current


def local_sources(data: DataConfig) -> list[str]:
    """The sources of ``data`` whose files can be looked at without the network."""
    return [s for s in ([s for s, _ in data.mixture] or [data.source])
            if watchable(s) and not remote(s)]


def source_files(data: DataConfig) -> Snapshot:
    """The files of ``data``'s local sources now (take it before ingest reads them, keep it
    with :func:`save_ingest` once the stage succeeded)."""
    return {p: st for s in local_sources(data) for p, st in snapshot(s).items()}


def save_ingest(workdir: Path, data: DataConfig, files: Snapshot) -> None:
    """Keep the files ingest read (``.gptops/ingested.json``)."""
    _save(Workspace(Path(workdir)).ingest_state, "\n".join(local_sources(data)), files)


def unread_change(workdir: Path, data: DataConfig) -> Change | None:
    """What changed in ``data``'s local sources since ingest last read them; None if nothing
    did, nothing was recorded, or it was recorded for other sources (which re-run ingest
    anyway). A hub dataset is never asked: no network here."""
    sources = local_sources(data)
    saved = _load(Workspace(Path(workdir)).ingest_state, "\n".join(sources))
    if not sources or saved is None:
        return None
    change = diff(saved, source_files(data))
    return change if change.files or change.removed else None
