"""Scenario 7 (full disk): a data stage whose outputs cannot be written is a failed stage.

Before, with the DVC cache on a full file system, ``clean`` was reported as ran and ``dvc.lock``
updated although DVC had only logged that it could not copy the outputs into its cache; ``dvc
status -c`` then said "Missing cache files", and the run failed later on something else. Now the
stage fails with one line naming the full folder (``no space left on <path>``) and the fix,
``dvc.lock`` and the registry are left as they were, and a re-run once there is space writes the
outputs again (nothing half-written is taken as complete). The same line comes when the stage
itself runs out of space while writing its outputs into the workspace.

Real small tmpfs mounts (root only; skipped with the reason otherwise).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt.errors import DataError
from tests.conftest import DATA_OVERRIDES, PROJECT_ROOT, RUN_OVERRIDES, make_workspace

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

#: What stays free on the small file system: less than clean's outputs need (~400 KB).
LEAVE_FREE = 100_000
#: Another clean version: its outputs differ, so they must be written (and cached) anew.
RECLEAN = "clean.min_words=6"


@pytest.fixture()
def small_fs():
    """Mount a real 20 MB tmpfs on a given (empty) folder; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)


def _fill(fs: Path) -> Path:
    """Fill ``fs`` up to ``LEAVE_FREE`` bytes; return the filler (delete it to free space)."""
    filler = fs / "filler"
    with filler.open("wb") as fh:
        fh.write(b"\0" * (shutil.disk_usage(fs).free - LEAVE_FREE))
    assert shutil.disk_usage(fs).free <= LEAVE_FREE
    return filler


def _dvc(ws: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, check=True,
                          capture_output=True, text=True, timeout=120).stdout


def _one_line(out: str, needle: str) -> str:
    (line,) = [ln for ln in out.splitlines() if needle in ln]
    return line


def test_outputs_that_do_not_fit_in_the_dvc_cache_fail_the_run(pipeline_run, tmp_path,
                                                               small_fs, prefect_server):
    from gpt import dvc_repo, params_file
    from gpt.registry import list_versions, resolve_tracking_uri

    ws = tmp_path / "ws"
    shutil.copytree(pipeline_run[0], ws, symlinks=True)
    fs = small_fs(tmp_path / "small-fs")
    cache = fs / "cache"
    shutil.copytree(ws / ".dvc" / "cache", cache)
    _dvc(ws, "cache", "dir", str(cache))
    filler = _fill(fs)
    lock = (ws / "dvc.lock").read_bytes()
    uri = resolve_tracking_uri("", ws)
    versions = {(v["name"], v["version"]) for v in list_versions(uri)}

    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PREFECT_API_URL": prefect_server,
           "GPTOPS_PROGRESS": "plain"}
    sets = [a for o in [*RUN_OVERRIDES, RECLEAN] for a in ("--set", o)]
    r = subprocess.run([sys.executable, "-m", "flows.cli", "run", "-w", str(ws), *sets],
                       capture_output=True, text=True, env=env, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    line = _one_line(r.stdout, "error:")
    assert f"error: data stage 'clean' failed: no space left on {cache}" in line, out
    assert "dvc cache dir" in line
    assert "Traceback" not in out and "autoflush" not in out
    assert (ws / "dvc.lock").read_bytes() == lock
    assert {(v["name"], v["version"]) for v in list_versions(uri)} == versions
    with pytest.raises(DataError, match="data/clean does not match dvc.lock"):
        dvc_repo.verify_outputs(ws)  # the uncached outputs are not taken for the locked ones

    filler.unlink()  # space again: the same version is written and cached
    params_file.apply_data_overrides(ws, [RECLEAN])
    assert dvc_repo.run_stage(ws, "clean").ran
    assert (ws / "dvc.lock").read_bytes() != lock
    dvc_repo.verify_outputs(ws)
    dvc_repo.push(ws)  # every object of dvc.lock is in the cache (else: "missing cache files")


def test_a_stage_that_runs_out_of_space_writing_its_outputs_fails_in_one_line(tmp_path,
                                                                             small_fs):
    from gpt import dvc_repo

    ws = make_workspace(tmp_path / "ws", DATA_OVERRIDES)
    dvc_repo.run_stage(ws, "ingest")
    data = ws / "data"
    shutil.move(data, tmp_path / "data")
    small_fs(data)  # the workspace's data folder on the small disk
    shutil.copytree(tmp_path / "data", data, dirs_exist_ok=True)
    filler = _fill(data)
    lock = (ws / "dvc.lock").read_bytes()

    with pytest.raises(DataError) as err:
        dvc_repo.run_stage(ws, "clean")
    msg = str(err.value)
    assert msg.startswith(f"data stage 'clean' failed: no space left on {data}"), msg
    assert "\n" not in msg and "Traceback" not in msg
    assert (ws / "dvc.lock").read_bytes() == lock
    assert not (data / "clean").exists()  # no output that looks complete
    assert not list(data.glob(".clean.partial/.*.tmp-*"))  # nor half-written shard files

    filler.unlink()
    assert dvc_repo.run_stage(ws, "clean").ran
    assert "up to date" in _dvc(ws, "status", "clean")  # outputs match dvc.lock
