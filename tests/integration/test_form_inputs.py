"""A bad override submitted from the Run form (or `prefect deployment run`) fails at once, with
the close key, instead of queueing for the workspace and failing after the run it waited for."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import DATA_OVERRIDES, PROJECT_ROOT, make_workspace

HOLD = """
import sys, time
from gpt.workspace_lock import workspace_lock
with workspace_lock(sys.argv[1], "another run"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.timeout(300)
def test_a_typo_fails_before_the_run_queues_for_the_workspace(tmp_path, prefect_server):
    from flows.pipeline import training_pipeline
    from gpt.errors import ConfigError

    ws = make_workspace(tmp_path / "ws", DATA_OVERRIDES)
    # Another process holds the workspace: a run that queued for it would wait for good here.
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("GPTOPS_WORKSPACE_HELD", None)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(ws)], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=r"did you mean 'train.max_steps'\?"):
            training_pipeline(overrides=["train.maxsteps=5"], workdir=str(ws))
        assert time.perf_counter() - t0 < 120  # it never waited for the holder
        assert holder.poll() is None  # the holder still held it all along
    finally:
        holder.kill()
        holder.wait()
    assert not (ws / ".gptops" / "runs").exists()
