"""Scenario 2: two pipelines on one workspace.

Before, two `gptops run` started together trained into the same run folder (one resumed from the
other's half-written checkpoint) and registered duplicate versions. Now one run holds the
workspace (its flock, freed by the kernel when the holder dies): a second
run with ``--no-wait`` fails at once naming the holder; a second run that waits starts when the
first ends, finds every step finished and registers nothing new.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT, RUN_OVERRIDES

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_a_second_run_waits_or_fails_naming_the_holder(pipeline_run, tmp_path, prefect_server):
    from gpt.registry import list_versions, resolve_tracking_uri

    ws = tmp_path / "ws"
    shutil.copytree(pipeline_run[0], ws, symlinks=True)
    uri = resolve_tracking_uri("", ws)
    before = {(v["name"], v["version"]) for v in list_versions(uri)}
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PREFECT_API_URL": prefect_server,
           "GPTOPS_PROGRESS": "plain"}
    # Long enough (with fine-tuning, evaluation and registration after it) for the second run
    # to start and wait while the first holds the workspace.
    sets = [a for o in [*RUN_OVERRIDES, "train.max_steps=120", "sft.enabled=false"]
            for a in ("--set", o)]

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "-w", str(ws), *sets,
                                 *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)

    first = start()
    lock = ws / ".gptops" / "workspace.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.2)
    holder = lock.read_text().strip()
    assert holder.startswith("flow run '") and f"(pid {first.pid}" in holder

    t0 = time.perf_counter()
    busy = subprocess.run([sys.executable, "-m", "flows.cli", "run", "-w", str(ws), *sets,
                           "--no-wait"], capture_output=True, text=True, env=env, timeout=120)
    assert busy.returncode == 2, busy.stdout + busy.stderr
    assert "is busy: flow run '" in busy.stdout and f"(pid {first.pid}" in busy.stdout
    assert time.perf_counter() - t0 < 60

    second = start()  # waits for the first
    out1, _ = first.communicate(timeout=600)
    out2, _ = second.communicate(timeout=600)
    assert first.returncode == 0, out1
    assert second.returncode == 0, out2
    assert "waiting for workspace" in out2 and f"(pid {first.pid}" in out2
    assert "pretrain: reused" in out2  # the first one's training, finished
    after = {(v["name"], v["version"]) for v in list_versions(uri)}
    new = after - before
    assert {n for n, _ in new} <= {"gptops-base", "gptops-package-clf"}
    assert len(new) == len({n for n, _ in new})  # one new version per model, no duplicates
    runs = ws / ".gptops" / "runs" / "pretrain"
    assert not list(runs.glob("*/checkpoints/.ckpt-*"))  # no half-written checkpoint left
