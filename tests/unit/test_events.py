"""The data watcher's quiet period and state (gpt.data.watch), and what a gate decision's event
says (flows.events.decision_event): pure functions, no server."""

from __future__ import annotations

import json
import os

from flows.events import CHALLENGER, PROMOTED, REJECTED, decision_event
from gpt.data.watch import SourceWatch, diff, watchable
from gpt.layout import Workspace


def _touch(path, text: str, mtime: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(mtime, mtime))


def test_a_change_is_announced_once_after_the_quiet_period(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    _touch(src / "a.txt", "first", 10**18)
    w = SourceWatch.open(tmp_path, str(src), quiet_s=10, now=0)
    assert w.poll(1) is None  # nothing changed since the start
    _touch(src / "b.txt", "second", 10**18)
    assert w.poll(2) is None  # changed, not quiet yet
    _touch(src / "c.txt", "third", 10**18)  # a copy still going: the quiet period restarts
    assert w.poll(9) is None and w.poll(18) is None
    change = w.poll(19.5)
    assert change is not None and [os.path.basename(f) for f in change.files] == ["b.txt",
                                                                                    "c.txt"]
    assert change.removed == [] and change.summary == "2 new or changed files (b.txt, c.txt)"
    assert w.poll(100) is None  # announced once


def test_a_change_made_while_nobody_watched_is_announced_at_the_next_start(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    _touch(src / "a.txt", "first", 10**18)
    SourceWatch.open(tmp_path, f"{src}/*.txt", quiet_s=0, now=0)
    assert json.loads(Workspace(tmp_path).watch_state.read_text())["source"] == f"{src}/*.txt"
    _touch(src / "a.txt", "first, edited", 2 * 10**18)
    (src / "ignored.md").write_text("not in the glob")
    w = SourceWatch.open(tmp_path, f"{src}/*.txt", quiet_s=0, now=0)
    change = w.poll(1)
    assert change is not None and [os.path.basename(f) for f in change.files] == ["a.txt"]


def test_removed_files_and_sources_without_files():
    assert diff({"a": (1, 1), "b": (1, 1)}, {"b": (1, 2)}).removed == ["a"]
    assert diff({"a": (1, 1), "b": (1, 1)}, {"b": (1, 2)}).files == ["b"]
    assert not watchable("builtin") and watchable("hf:some/dataset")  # its hub revision
    assert watchable("data/*.jsonl")


def test_decision_events_name_model_version_metric_and_champion():
    reg = {"name": "gptops-base", "version": "3", "champion": True, "previous_champion": "2",
           "reason": "val_ppl 12 beats champion 13", "metric": "val_ppl", "value": 12.0}
    event, resource, payload = decision_event("base", reg)
    assert event == PROMOTED and resource["prefect.resource.id"] == "gptops.model.gptops-base"
    assert payload["champion"] == "3" and payload["previous_champion"] == "2"
    assert payload["metric"] == "val_ppl" and payload["value"] == 12.0
    assert payload["text"].startswith("gptops: gptops-base v3 promoted to champion (val_ppl 12)")
    event, _, payload = decision_event("base", {**reg, "champion": False})
    assert event == CHALLENGER and payload["champion"] == "2"
    event, _, _ = decision_event("base", {**reg, "champion": False, "rejected": True})
    assert event == REJECTED
