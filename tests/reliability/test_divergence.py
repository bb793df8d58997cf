"""Scenario 4: a loss spike or divergence must not register garbage.

- ``train.lr=3.0`` makes the loss jump far above a uniform guess; training stops after warmup
  with one line suggesting a lower learning rate (before: it ran on and exited 0);
- a version whose metric does not beat its trivial baseline gets neither alias and is tagged
  ``rejected`` with the reason (before: it became the challenger).
"""

from __future__ import annotations

import pytest

from gpt.errors import TrainingError

pytestmark = pytest.mark.reliability


def _cfg(lr: float, factor: float):
    from gpt.config import LaunchConfig, ModelConfig, TrainConfig

    model = ModelConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True,
                        init_from="", vocab_multiple=1)
    train = TrainConfig(max_steps=200, batch_size=8, grad_accum=1, lr=lr, min_lr_factor=1e-4 / lr,
                        warmup_steps=10, weight_decay=0.1, beta1=0.9, beta2=0.95,
                        grad_clip=1.0, eval_interval=1000, eval_batches=1,
                        checkpoints=1, compile=False, seed=0,
                        max_nonfinite_steps=5, log_interval=0, divergence_factor=factor,
                        divergence_steps=10, bench_interval=0, bench_limit=1)
    launch = LaunchConfig(device="cpu", nproc_per_node=1, nnodes=1, node_rank=0,
                          rdzv_endpoint="", strategy="ddp")
    return model, train, launch


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    from tests.integration.pretrain_worker import build_shards

    return build_shards(tmp_path_factory.mktemp("div") / "tokens")


def test_a_diverging_run_stops_with_one_line(tokens, tmp_path):
    from gpt import train

    with pytest.raises(TrainingError) as err:
        train.pretrain(*_cfg(3.0, 1.3), tokens, tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith("pretrain: the loss diverged: ") and "\n" not in msg
    assert "for 10 steps; lower train.lr (now 3), e.g. to 0.3" in msg
    assert not (tmp_path / "out" / "model.safetensors").exists()  # nothing to register


def test_a_healthy_run_is_not_stopped(tokens, tmp_path):
    from gpt import train

    r = train.pretrain(*_cfg(3e-3, 1.3), tokens, tmp_path / "out")
    assert r.loop.steps == 200 and r.loop.final_loss < 6.0


def test_a_version_worse_than_its_baseline_gets_no_alias(tmp_path):
    from gpt import registry
    from gpt.registry import gate

    uri = registry.default_tracking_uri(tmp_path)
    client = registry.client(uri)
    client.create_registered_model("m")
    spec = gate.GateSpec("val_ppl", False, 4096.0)
    good = client.create_model_version("m", "file:///nowhere/1").version
    gate.apply(client, "m", good, spec, {"val_ppl": 120.0}, "e1")
    bad = client.create_model_version("m", "file:///nowhere/2").version
    verdict = gate.apply(client, "m", bad, spec, {"val_ppl": 3.5e4}, "e1")
    assert verdict.decision.rejected and not verdict.decision.promote
    v = client.get_model_version("m", bad)
    assert v.aliases == []
    assert v.tags[gate.REJECTED].startswith("rejected: val_ppl 3.5e+04 does not beat the "
                                            "trivial baseline 4096")
    assert client.get_model_version_by_alias("m", "champion").version == good
    aliases = client.get_registered_model("m").aliases
    assert aliases.get("challenger") != bad


#: The tiny profile's model at a short context, warmed up to train.lr=5 in 10 steps: the loss
#: climbs past 1,000 and its gradients overflow float32 at step ~14, before the divergence
#: guard's 10 steps after warmup are up (what an operator saw with `--set train.lr=5`).
LR5 = ["train.lr=5", "model.block_size=32", "train.batch_size=4", "train.warmup_steps=10",
       "train.max_steps=30", "train.eval_interval=1000", "train.checkpoints=1"]


@pytest.mark.timeout(480)
def test_lr_5_through_the_cli_says_the_loss_diverged(tmp_path):
    """Before: "5 non-finite steps in a row at step 17; lower train.lr or check the data",
    while the loss (1675) was finite. Now the divergence guard's line."""
    import os
    import subprocess
    import sys

    from gpt.dvc_repo import STAGES, run_stage
    from tests.conftest import PROJECT_ROOT, make_workspace

    ws = make_workspace(tmp_path / "ws", ["data.max_docs=1500"])
    for stage in STAGES:
        run_stage(ws, stage)

    def pretrain(*sets: str) -> subprocess.CompletedProcess:
        args = [a for s in sets for a in ("--set", s)]
        return subprocess.run([sys.executable, "-m", "flows.cli", "pretrain", "-w", str(ws),
                               *args], capture_output=True, text=True, timeout=220,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})

    r = pretrain(*LR5)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out and "non-finite steps" not in out
    last = r.stdout.strip().splitlines()[-1]  # the error line (logs go to stderr)
    assert last.startswith("error: pretrain: the loss diverged: "), last
    assert "lower train.lr (now 5), e.g. to 0.5" in last, last
    # Which guard stops it first depends on the CPU's float rounding: the loss guard (loss
    # above its ceiling for 10 steps after warm-up), or gradients that overflow float32 first
    # (the CI machine of 2026-12-07 morning; not this one since). A skipped update says why;
    # the overflow path itself: test_overflowed_gradients_with_a_finite_loss_say_so.
    if "update skipped" in out:
        assert "but gradient norm" in out and "(the gradients overflowed), update skipped" in out
        assert "and its gradients overflowed float32 (norm " in last
        assert last.endswith("for 5 steps in a row, so no update could be applied; lower "
                             "train.lr (now 5), e.g. to 0.5"), last
    else:
        assert "stayed above" in last and "train.divergence_factor" in last, last
    # The next command a user types, at a sane learning rate, trains and finishes.
    ok = pretrain(*[s for s in LR5 if not s.startswith(("train.lr", "train.max_steps"))],
                  "train.max_steps=5")
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.parametrize("scale, message", [
    # A finite loss whose gradients overflow float32 (1e30 each: their norm is inf).
    (1e30, "finetune: the loss diverged: "),
    # A loss that is itself NaN: the data or the learning rate.
    (float("nan"), "finetune: the loss was nan for 5 steps in a row at step 5; "),
])
def test_skipped_steps_say_why_and_name_the_kinds_lr(scale, message):
    import torch

    from gpt.train import LoopSettings, make_optimizer, run_loop

    model = torch.nn.Linear(16, 16)
    device = torch.device("cpu")

    def loss_fn(m, step, micro):
        return (m.weight * scale).sum()

    settings = LoopSettings(kind="finetune", max_steps=20, lr=1e-3, min_lr=1e-4, warmup_steps=0,
                            grad_accum=1, grad_clip=1.0, max_nonfinite_steps=5)
    before = model.weight.detach().clone()
    with pytest.raises(TrainingError) as err:
        run_loop(model, loss_fn, make_optimizer(model, 1e-3, 0.0, (0.9, 0.95), device),
                 settings, device)
    msg = str(err.value)
    assert msg.startswith(message) and "lower finetune.lr (now 0.001), e.g. to 0.0001" in msg
    assert torch.equal(model.weight, before)  # no update was applied


def test_overflowed_gradients_with_a_finite_loss_say_so(caplog):
    """The loop's guard on updates it had to skip: a finite loss whose gradients overflowed
    float32 is a diverging run (not bad data), said on each skipped step and in the final line."""
    import logging
    import math

    from gpt.train import LoopSettings, _Guard

    guard = _Guard(LoopSettings(kind="pretrain", max_steps=30, lr=5.0, min_lr=0.5,
                                warmup_steps=10, grad_accum=1, grad_clip=1.0,
                                max_nonfinite_steps=5, max_loss=10.8, max_loss_steps=10))
    with caplog.at_level(logging.WARNING, logger="gpt.train"), \
            pytest.raises(TrainingError) as err:
        for step in range(13, 20):
            guard.check(step, 1675.0, math.inf, applied=False)
    skipped = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert len(skipped) == 5 and all("(the gradients overflowed)" in m for m in skipped)
    assert skipped[0] == "step 14: loss 1675 but gradient norm inf (the gradients overflowed), " \
                         "update skipped (1 in a row)"
    msg = str(err.value)
    assert msg == ("pretrain: the loss diverged: 1675 at step 18, and its gradients overflowed "
                   "float32 (norm inf) for 5 steps in a row, so no update could be applied; "
                   "lower train.lr (now 5), e.g. to 0.5")
