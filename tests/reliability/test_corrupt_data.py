"""Scenario 6: corrupted data outputs are refused, not trained on under the unchanged version.

Bytes flipped in ``data/tokens/train.bin`` or ``data/clean/docs.parquet`` of a finished
workspace: ``gptops pretrain`` and ``gptops finetune`` stop before training with one line naming
the file and the fix (exit 2); ``dvc checkout`` restores the data and the step runs again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT, RUN_OVERRIDES

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _flip(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _gptops(ws, *args: str) -> subprocess.CompletedProcess:
    sets = [a for o in RUN_OVERRIDES for a in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "flows.cli", *args, "-w", str(ws), *sets],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


@pytest.mark.parametrize("path, step, stage", [
    ("data/tokens/train-00000.bin", "pretrain", "tokenize"),
    ("data/clean/part-00000.parquet", "finetune", "clean"),
])
def test_flipped_bytes_in_a_data_output_are_refused(pipeline_run, tmp_path, path, step, stage):
    ws = tmp_path / "ws"
    shutil.copytree(pipeline_run[0], ws, symlinks=True)
    target = ws / path
    if target.is_symlink():  # a DVC link into the cache: corrupt a copy, not the cache
        real = target.resolve().read_bytes()
        target.unlink()
        target.write_bytes(real)
    _flip(target)
    r = _gptops(ws, step, "--set", "train.max_steps=31")
    assert r.returncode == 2, r.stdout + r.stderr
    out = (r.stdout + r.stderr).strip()
    assert f"{path.rsplit('/', 1)[0]} does not match dvc.lock (modified): restore it with " \
           f"`dvc checkout {path.rsplit('/', 1)[0]}`" in out and f"gptops data {stage}" in out
    assert "Traceback" not in out
    assert not any((ws / ".gptops" / "runs" / "pretrain").glob("*/checkpoints/ckpt-00000031"))

    subprocess.run([sys.executable, "-m", "dvc", "checkout", "-q", "--force"], cwd=ws,
                   check=True, timeout=120)
    assert _gptops(ws, "pretrain").returncode == 0  # restored: the finished step is reused
