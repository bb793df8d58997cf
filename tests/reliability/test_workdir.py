"""Scenario 11 (paths): ``-w /`` wrote params.yaml, dvc.yaml, .dvc/ and .gptops/ into the
filesystem root before failing. Now the root and the home folder are always refused, and a
non-empty folder that is not a workspace only becomes one with ``--init``; nothing is written
before the refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt.errors import ConfigError
from gpt.preflight import check_workdir
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability


def _run(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HOME": str(home),
                               "PREFECT_HOME": str(home / ".prefect")})


def _listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_the_root_and_home_folders_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="is the filesystem root"):
        check_workdir(Path("/"))
    with pytest.raises(ConfigError, match="is the filesystem root"):
        check_workdir(Path("/"), init=True)  # --init does not make the root acceptable
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="is your home folder"):
        check_workdir(tmp_path, init=True)


def test_gptops_run_refuses_the_home_folder_before_writing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    before = _listing(home)
    r = _run("-w", str(home), home=home)
    assert r.returncode == 2, r.stderr
    assert "is your home folder" in r.stdout + r.stderr
    assert _listing(home) == before  # no params.yaml, dvc.yaml, .dvc or .gptops


def test_a_non_empty_folder_needs_init(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8")
    r = _run("-w", str(folder), "--set", "train.max_steps=0", home=home)  # 0: invalid, see below
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "is not empty (a.jpg) and not a gptops workspace (no params.yaml or dvc.yaml): pass " \
           "--init to make it one" in out
    assert _listing(folder) == ["a.jpg"]
    # With --init it becomes a workspace (here the run then stops on the invalid max_steps,
    # an input error found before any training).
    r = _run("-w", str(folder), "--init", "--set", "train.max_steps=0", home=home)
    assert r.returncode == 2
    assert {"params.yaml", "dvc.yaml", ".dvc"} <= set(_listing(folder))
    check_workdir(folder)  # a workspace now: accepted without --init
