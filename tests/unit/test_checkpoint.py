"""Checkpoints: atomic, verified, resumable."""


import pytest
import torch

from gpt import checkpoint as ckpt
from gpt.train import CheckpointPolicy, LoopSettings, make_optimizer, run_loop
from tests.unit.test_model import tiny


def _train(steps: int, ckpt_dir, resume: bool = True) -> torch.nn.Module:
    m = tiny().train()
    opt = make_optimizer(m, 1e-2, 0.1, (0.9, 0.95), torch.device("cpu"))

    def loss_fn(model, step, micro):
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, 97, (4, 16), generator=g)
        return model(x, x)[1]

    settings = LoopSettings(kind="train", max_steps=steps, lr=1e-2, min_lr=1e-3, warmup_steps=2,
                            grad_accum=1, grad_clip=1.0, max_nonfinite_steps=5)
    run_loop(m, loss_fn, opt, settings, torch.device("cpu"),
             checkpoints=CheckpointPolicy(ckpt_dir, interval=3, resume=resume))
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
