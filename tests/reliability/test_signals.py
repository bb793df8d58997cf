"""Scenario 3 (signals): SIGTERM or Ctrl-C (SIGINT) in the middle of training saves a checkpoint
at the current step, then exits with 128 + the signal (143, 130), not 0; before, the steps since
the last periodic checkpoint were lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT, RUN_OVERRIDES

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_and_exits_non_zero(pipeline_run, tmp_path, sig, code):
    ws = tmp_path / "ws"
    shutil.copytree(pipeline_run[0], ws, symlinks=True)
    every = 20  # the periodic checkpoint: the signal comes some steps after the first
    sets = [a for o in [*RUN_OVERRIDES, "train.max_steps=3000",
                        f"train.checkpoints={3000 // every}", "train.eval_interval=3000"]
            for a in ("--set", o)]
    before = set((ws / ".gptops" / "runs" / "pretrain").iterdir())
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "pretrain", "-w", str(ws), *sets],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
                                 "GPTOPS_PROGRESS": "plain"})
    deadline = time.time() + 180
    run = None
    while time.time() < deadline:
        new = set((ws / ".gptops" / "runs" / "pretrain").iterdir()) - before
        if new and list((run := next(iter(new))).glob(f"checkpoints/ckpt-{every:08d}")):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    time.sleep(0.5)  # some steps past the periodic checkpoint
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    m = re.search(rf"stopped by {sig.name} at step (\d+) of 3000 \(checkpoint saved", out)
    assert m, out
    step = int(m.group(1))
    assert every < step < 3000
    newest = sorted((run / "checkpoints").glob("ckpt-*"))[-1]
    manifest = json.loads((newest / "manifest.json").read_text())
    assert manifest["step"] == step  # the checkpoint is of the step it stopped at
    assert not (run / "result.json").exists()  # the step is not recorded as finished
