"""A real crash: SIGKILL a pretraining process mid-run, resume in a new one, compare weights.

The resumed run must end bit-identical to an uninterrupted one, also when the newest checkpoint
was corrupted by the crash (resume falls back to the previous valid checkpoint).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gpt import checkpoint as ckpt
from tests.integration.pretrain_worker import build_shards

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("pretrain_worker.py")
MAX_STEPS = 60
INTERVAL = 10


def _cmd(tokens: Path, out: Path, report: Path, step_delay: float = 0.0) -> list[str]:
    return [sys.executable, str(WORKER), str(tokens), str(out), str(report),
            "--max-steps", str(MAX_STEPS), "--checkpoint-interval", str(INTERVAL),
            "--step-delay", str(step_delay)]


def _run(tokens: Path, out: Path, report: Path) -> dict:
    subprocess.run(_cmd(tokens, out, report), check=True, timeout=120)
    return json.loads((report / "rank0.json").read_text())


def _run_and_kill(tokens: Path, out: Path, report: Path, min_checkpoints: int) -> None:
    """Start a slowed-down run and SIGKILL it once ``min_checkpoints`` checkpoints exist."""
    proc = subprocess.Popen(_cmd(tokens, out, report, step_delay=0.05))
    try:
        deadline = time.monotonic() + 60
        while len(ckpt.list_checkpoints(out / "checkpoints")) < min_checkpoints:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / ckpt.WEIGHTS).exists(), "killed before the end: no final weights yet"


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].equal(wb[key]), key


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return build_shards(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def straight(tokens, tmp_path_factory) -> Path:
    """An uninterrupted run's output folder."""
    out = tmp_path_factory.mktemp("straight")
    report = _run(tokens, out / "run", out / "report")
    assert report["resumed_from"] == 0
    return out / "run"


def test_sigkill_then_resume_is_bit_identical(tokens, straight, tmp_path):
    out = tmp_path / "run"
    _run_and_kill(tokens, out, tmp_path / "killed", min_checkpoints=1)
    newest = int(ckpt.list_checkpoints(out / "checkpoints")[0].name.split("-")[1])
    report = _run(tokens, out, tmp_path / "resumed")
    assert 0 < report["resumed_from"] < MAX_STEPS
    assert report["resumed_from"] >= newest  # the killed run may have saved one more
    _assert_same_weights(straight / ckpt.WEIGHTS, out / ckpt.WEIGHTS)


def test_corrupt_newest_checkpoint_falls_back_and_ends_identical(tokens, straight, tmp_path):
    out = tmp_path / "run"
    _run_and_kill(tokens, out, tmp_path / "killed", min_checkpoints=2)
    newest, older = ckpt.list_checkpoints(out / "checkpoints")[:2]
    (newest / ckpt.WEIGHTS).write_bytes(b"torn write")
    report = _run(tokens, out, tmp_path / "resumed")
    assert report["resumed_from"] == int(older.name.split("-")[1])
    _assert_same_weights(straight / ckpt.WEIGHTS, out / ckpt.WEIGHTS)
