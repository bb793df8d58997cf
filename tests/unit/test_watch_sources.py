"""The data watcher on sources other than local files (gpt.data.watch): an ``hf:`` folder
written by ``save_to_disk``, an ``hf:`` hub dataset's revision asked of a hub on 127.0.0.1 (an
``http.server`` thread answering ``/api/datasets/<id>`` as the hub does), a hub that goes away
and comes back, offline mode; and what ``gptops run`` says when the local source changed since
the last ingest."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gpt.config import DataConfig, load_params
from gpt.data.watch import (
    PollError,
    SourceWatch,
    hub_revision,
    remote,
    save_ingest,
    snapshot,
    source_files,
    unread_change,
    watchable,
)
from gpt.layout import Workspace

DATASET = "me/corpus"


class _Hub(BaseHTTPRequestHandler):
    """The hub's dataset-info endpoint: ``{"id", "sha"}``, or 503 while ``down``."""

    sha = "a" * 40
    down = False
    asked = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).asked += 1
        if self.down or self.path.split("?")[0] != f"/api/datasets/{DATASET}":
            self.send_response(503 if self.down else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"id": DATASET, "sha": self.sha, "private": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{self.sha}"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hub(monkeypatch):
    """A hub on 127.0.0.1 that huggingface_hub talks to (online mode for this test only)."""
    from huggingface_hub import constants

    _Hub.sha, _Hub.down, _Hub.asked = "a" * 40, False, 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield _Hub
    server.shutdown()
    server.server_close()


def _data(source: str) -> DataConfig:
    return load_params(overrides=[f"data.source={source}"]).data


def test_which_sources_are_watched_and_which_are_remote(tmp_path):
    (tmp_path / "ds").mkdir()
    assert not watchable("builtin") and not watchable("") and not watchable("hf:")
    assert watchable("data/*.jsonl") and watchable(f"hf:{DATASET}")
    assert watchable(f"hf:{tmp_path / 'ds'}") and not remote(f"hf:{tmp_path / 'ds'}")
    assert remote(f"hf:{DATASET}") and remote(f"hf:{DATASET}:train")
    assert not remote("hf:./not/yet/written") and not remote("data/*.jsonl")


def test_an_hf_folder_rewritten_by_save_to_disk_is_one_change(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["one", "two"]}).save_to_disk(str(folder))
    source = f"hf:{folder}"
    w = SourceWatch.open(tmp_path, source, quiet_s=5, now=0)
    assert w.seen and all(p.startswith(str(folder)) for p in w.seen)
    assert w.poll(1) is None
    datasets.Dataset.from_dict({"text": ["one", "two", "three, new"]}).save_to_disk(
        str(tmp_path / "ds2"))
    for p in (tmp_path / "ds2").iterdir():  # the folder rewritten in place
        p.replace(folder / p.name)
    assert w.poll(2) is None  # not quiet yet
    change = w.poll(8)
    assert change is not None and change.files and not change.revision
    assert any(f.endswith(".arrow") for f in change.files), change.files
    assert w.poll(20) is None


def test_a_new_hub_revision_is_announced_once_after_the_quiet_period(tmp_path, hub):
    source = f"hf:{DATASET}"
    assert hub_revision(DATASET) == "a" * 40
    w = SourceWatch.open(tmp_path, source, quiet_s=10, now=0)
    assert w.seen == {source: ("a" * 40,)}
    assert w.poll(1) is None
    hub.sha = "b" * 40  # a push
    assert w.poll(2) is None
    hub.sha = "c" * 40  # another push within the quiet period: one run for both
    assert w.poll(5) is None and w.poll(14) is None
    change = w.poll(15)
    assert change is not None and change.files == [source] and change.revision == "c" * 40
    assert change.summary == f"{source} at revision {'c' * 40}"
    assert w.poll(100) is None
    # announced and kept: a new start compares with it
    assert SourceWatch.open(tmp_path, source, quiet_s=0, now=0).poll(1) is None


def test_a_hub_outage_is_one_warning_no_event_and_no_crash(tmp_path, hub, caplog):
    source = f"hf:{DATASET}"
    caplog.set_level(logging.WARNING, logger="gpt.data.watch")
    w = SourceWatch.open(tmp_path, source, quiet_s=0, now=0)
    hub.down = True
    assert all(w.poll(t) is None for t in range(1, 6))  # five failed polls
    outage = [r for r in caplog.records if "cannot check the revision" in r.getMessage()]
    assert len(outage) == 1 and "hf:me/corpus" in outage[0].getMessage()
    assert hub.asked >= 6  # each poll asked
    hub.down = False  # back, unchanged: said once, no event
    assert w.poll(7) is None
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1
    hub.down = True  # a second outage is a second warning
    assert w.poll(8) is None and w.poll(9) is None
    assert sum("cannot check the revision" in r.getMessage() for r in caplog.records) == 2
    hub.down, hub.sha = False, "d" * 40  # back with a push made meanwhile: announced
    change = w.poll(10)
    assert change is not None and change.revision == "d" * 40


def test_a_hub_unreachable_at_start_takes_its_first_answer_as_unchanged(tmp_path, hub, caplog):
    hub.down = True
    w = SourceWatch.open(tmp_path, f"hf:{DATASET}", quiet_s=0, now=0)
    assert w.announced is None and not Workspace(tmp_path).watch_state.exists()
    hub.down = False
    assert w.poll(1) is None and w.poll(2) is None  # the baseline, not a change
    assert json.loads(Workspace(tmp_path).watch_state.read_text())["files"] == {
        f"hf:{DATASET}": ["a" * 40]}


def test_offline_mode_is_a_poll_error_not_a_crash(tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PollError, match="offline mode"):
        snapshot(f"hf:{DATASET}")
    w = SourceWatch.open(tmp_path, f"hf:{DATASET}", quiet_s=0, now=0)
    assert w.poll(1) is None and w.poll(2) is None
    assert sum("offline mode" in r.getMessage() for r in caplog.records) == 1


def test_a_file_added_since_the_last_ingest_is_noticed(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.txt").write_text("first")
    data = _data(str(src))
    assert unread_change(tmp_path, data) is None  # nothing recorded: nothing said
    save_ingest(tmp_path, data, source_files(data))
    assert unread_change(tmp_path, data) is None
    (src / "b.txt").write_text("second")
    change = unread_change(tmp_path, data)
    assert change is not None and change.summary == "1 new or changed file (b.txt)"
    assert unread_change(tmp_path, _data(f"{src}/a.*")) is None  # another source: re-ingested
    assert unread_change(tmp_path, _data(f"hf:{DATASET}")) is None  # never asks the hub
