"""Scenario 5: running out of memory gives one line naming the sizes to lower, and the Prefect
training task does not retry it (it is an input error, a GptopsError).

The fault is real: the training process runs under an address-space limit (RLIMIT_AS) and a
batch of 20000 sequences, so the CPU allocator fails inside the forward pass.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.reliability

SCRIPT = """
import sys
from pathlib import Path
from gpt import train
from gpt.config import LaunchConfig, ModelConfig, TrainConfig
from gpt.errors import GptopsError
from tests.integration.pretrain_worker import build_shards

tokens = build_shards(Path(sys.argv[1]) / "tokens")
model = ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0, bias=True,
                    init_from="", vocab_multiple=1)
cfg = TrainConfig(max_steps=5, batch_size=20000, grad_accum=1, lr=1e-3, min_lr_factor=0.1,
                  warmup_steps=1, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
                  eval_interval=100, eval_batches=1, checkpoints=1, compile=False,
                  seed=0, max_nonfinite_steps=5, log_interval=0, divergence_factor=0.0,
                  divergence_steps=10, bench_interval=0, bench_limit=1)
launch = LaunchConfig(device="cpu", nproc_per_node=1, nnodes=1, node_rank=0, rdzv_endpoint="",
                      strategy="ddp")
try:
    train.pretrain(model, cfg, launch, tokens, Path(sys.argv[1]) / "out")
except GptopsError as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(2)
"""


def _limit() -> None:
    limit = 3 * 2**30  # torch's import needs ~1 GB of address space; a 20000 batch needs far more
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_out_of_memory_is_one_line_naming_the_sizes(tmp_path):
    from flows.tasks import not_input_error

    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                       text=True, timeout=300, preexec_fn=_limit,
                       env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
                            "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = r.stdout.strip().splitlines()
    assert line.startswith("TrainingError: pretrain: out of memory on cpu at step 0: lower "
                           "train.batch_size or model.block_size (raise train.grad_accum"), line
    assert "Traceback" not in r.stderr

    # The task's retry condition: a TrainingError is not retried (a crash would be).
    from gpt.errors import TrainingError

    class State:
        data = TrainingError(line)

    assert not_input_error(None, None, State()) is False
