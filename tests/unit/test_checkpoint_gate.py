"""Checkpoints (atomic, verified, resumable) and the registry's promotion gate."""

import math

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt.registry import decide_promotion
from gpt.train import LoopSettings, make_optimizer, run_loop
from tests.unit.test_model import tiny


def _train(steps: int, ckpt_dir, resume: bool = True) -> torch.nn.Module:
    m = tiny().train()
    opt = make_optimizer(m, 1e-2, 0.1, (0.9, 0.95), torch.device("cpu"))

    def loss_fn(model, step, micro):
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, 97, (4, 16), generator=g)
        return model(x, x)[1]

    settings = LoopSettings(max_steps=steps, lr=1e-2, min_lr=1e-3, warmup_steps=2,
                            checkpoint_interval=3, eval_interval=100, log_interval=0)
    run_loop(m, loss_fn, opt, settings, torch.device("cpu"), ckpt_dir, resume=resume)
    return m


def test_resume_gives_identical_weights(tmp_path):
    straight = _train(8, tmp_path / "a")
    _train(5, tmp_path / "b")  # "interrupted" after step 5 (checkpoint at 3 is the newest <=5)
    # keep only the step-3 checkpoint, as if the process died before step 6's save
    for p in ckpt.list_checkpoints(tmp_path / "b"):
        if not p.name.endswith("003"):
            import shutil
            shutil.rmtree(p)
    resumed = _train(8, tmp_path / "b")
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), k


def test_corrupt_newest_checkpoint_is_skipped(tmp_path):
    _train(6, tmp_path)
    newest, older = ckpt.list_checkpoints(tmp_path)[:2]
    (newest / ckpt.WEIGHTS).write_bytes(b"garbage")
    assert ckpt.latest_valid(tmp_path) == older
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        ckpt.verify(newest)


def test_no_temp_folder_left_looking_complete(tmp_path):
    _train(3, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000003"]


@pytest.mark.parametrize("new, champ, same, higher, promote", [
    (0.8, None, True, True, True),          # first version
    (0.8, 0.7, True, True, True),           # better
    (0.7, 0.8, True, True, False),          # worse
    (0.8, 0.7, False, True, False),         # different eval set: not comparable
    (10.0, 12.0, True, False, True),        # lower perplexity is better
    (math.nan, 0.7, True, True, False),     # NaN never promotes
])
def test_promotion_gate(new, champ, same, higher, promote):
    ok, reason = decide_promotion(new, champ, "h1", "h1" if same else "h2", higher, 0.0, "m")
    assert ok is promote and reason


def test_gate_refuses_a_version_that_does_not_beat_the_trivial_baseline():
    ok, reason = decide_promotion(0.03, None, "h", None, True, 0.0, "macro_f1", baseline=0.04)
    assert not ok and "baseline" in reason
    assert decide_promotion(0.30, None, "h", None, True, 0.0, "macro_f1", baseline=0.04)[0]
    assert not decide_promotion(5000.0, None, "h", None, False, 0.0, "val_ppl", baseline=4096)[0]


def test_gate_margin():
    assert not decide_promotion(0.705, 0.70, "h", "h", True, 0.01, "f1")[0]
    assert decide_promotion(0.72, 0.70, "h", "h", True, 0.01, "f1")[0]
