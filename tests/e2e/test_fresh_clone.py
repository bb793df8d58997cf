"""A fresh clone's first run leaves the clone's tracked files as they were.

The data stages are what write a tracked file (``dvc.lock``): they run here as ``gptops run``
runs them (:func:`gpt.dvc_repo.run_stage`, through ``scripts/lock-data.sh``), in a new clone
with a new ``HOME`` and ``PREFECT_HOME`` and the committed params. Gitignored outputs (``data/``,
``.gptops/``, DVC's cache) are fine; a modified ``dvc.lock`` means the committed one was stale.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT
from tests.unit.test_dvc_lock import FIX

pytestmark = pytest.mark.slow


def test_a_fresh_clones_data_stages_leave_git_status_clean(tmp_path):
    clone, home = tmp_path / "clone", tmp_path / "home"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(clone)], check=True)
    home.mkdir()
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HF_HUB_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({"HOME": str(home), "PREFECT_HOME": str(home / ".prefect"), "TERM": "dumb",
                "PYTHON": sys.executable, "DVC_NO_ANALYTICS": "1"})
    out = subprocess.run(["bash", "scripts/lock-data.sh"], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "lock-data: tokenize: ran" in out.stdout  # a fresh clone has no data: all ran

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=clone, capture_output=True, text=True,
                              check=True).stdout

    status = git("status", "--porcelain")
    assert status == "", (f"a fresh clone's first run changed it:\n{status}"
                          f"{git('diff', '--stat')}\n{git('diff')[:3000]}\n{FIX}")
