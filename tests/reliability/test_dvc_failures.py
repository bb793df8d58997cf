"""Scenario 7 (DVC): its failures are shown, not hidden.

- a remote that is not a folder: ``dvc push -q`` said only "Having any troubles? Hit us up at
  dvc.org/support"; now the error names the cause (``[Errno 20] Not a directory``);
- a deleted local remote was silently recreated empty; now a warning says the data versions
  pushed there before are lost;
- a DVC lock file cut in the middle of a write is repaired (one line), and one DVC refuses
  outright reaches the user with DVC's own message (moved from test_stops.py: it needs no quiet
  machine).
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from gpt.errors import DataError

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.fixture()
def ws(pipeline_run, tmp_path):
    dst = tmp_path / "ws"
    shutil.copytree(pipeline_run[0], dst, symlinks=True)
    return dst


def test_a_broken_remote_shows_dvcs_real_error(ws):
    from gpt import dvc_repo

    remote = ws / ".gptops" / "dvc-remote"
    shutil.rmtree(remote)
    remote.write_text("not a folder")
    with pytest.raises(DataError) as err:
        dvc_repo.push(ws)
    msg = str(err.value)
    assert "Not a directory" in msg and "Having any troubles" not in msg
    assert "\n" not in msg


def test_a_deleted_remote_is_reported_as_lost_history(ws, caplog):
    from gpt import dvc_repo

    dvc_repo.push(ws)  # the fixture's run pushed before; this one marks it too
    shutil.rmtree(ws / ".gptops" / "dvc-remote")
    with caplog.at_level(logging.WARNING, logger="gpt.dvc_repo"):
        dvc_repo.push(ws)
    (warning,) = [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]
    assert "can no longer be restored with `dvc pull`" in warning
    assert (ws / ".gptops" / "dvc-remote").is_dir()  # the current version is pushed again


def test_a_corrupt_rwlock_is_repaired_and_dvcs_own_errors_reach_the_user(ws, caplog):
    """The repair alone, and DVC's own message when its lock file is valid JSON of a shape it
    refuses (nothing to repair safely): before, only "failed to reproduce 'ingest'"."""
    from gpt import dvc_repo
    from gpt.errors import DataError

    rwlock = ws / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text('{"write": {"data/raw": {"pid": 1')  # cut in the middle of a write
    with caplog.at_level(logging.WARNING, logger="gpt.dvc_repo"):
        outcome = dvc_repo.run_stage(ws, "ingest")
    assert not outcome.ran
    assert json.loads(rwlock.read_text()) is not None
    (repaired,) = [r.getMessage() for r in caplog.records if "repaired" in r.getMessage()]
    assert str(rwlock) in repaired and "not valid JSON" in repaired

    rwlock.write_text('{"write": []}')
    with pytest.raises(DataError) as err:
        dvc_repo.run_stage(ws, "ingest")
    msg = str(err.value)
    assert "RWLock-file" in msg and "format error" in msg, msg
    assert "\n" not in msg
