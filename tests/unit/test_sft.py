"""Supervised fine-tuning: prompt tokens never count in the loss; the loss falls on a toy set;
a resumed run runs only the steps left."""

import shutil

import pytest
import torch

from gpt.config import load_params
from gpt.data.tokenizer import EOT, PAD, train_tokenizer
from gpt.errors import DataError
from gpt.finetune import IGNORE_INDEX, encode_sft_pairs, finetune_sft, sft_loss
from gpt.model import GPT, GPTConfig
from tests.conftest import PROJECT_ROOT

PAIRS = [(f"Q: what is {a} plus {b}? A:", f" {a + b}") for a in range(6) for b in range(6)]


@pytest.fixture(scope="module")
def tok():
    texts = [p + c for p, c in PAIRS] * 5
    return train_tokenizer(texts, 300)


def test_prompt_and_padding_positions_are_ignored(tok):
    block = 32
    ids, targets = encode_sft_pairs(tok, PAIRS[:3], block)
    assert ids.shape == targets.shape == (3, block)
    for row, (prompt, completion) in enumerate(PAIRS[:3]):
        p, c = tok.encode(prompt).ids, tok.encode(completion).ids
        seq = p + c + [tok.token_to_id(EOT)]
        assert ids[row, :len(seq) - 1].tolist() == seq[:-1]
        # positions 0 .. len(p)-2 predict prompt tokens: ignored
        assert (targets[row, :len(p) - 1] == IGNORE_INDEX).all()
        # from the last prompt token on, the targets are the completion and EOT
        assert targets[row, len(p) - 1:len(seq) - 1].tolist() == c + [tok.token_to_id(EOT)]
        assert (targets[row, len(seq) - 1:] == IGNORE_INDEX).all()
        assert (ids[row, len(seq) - 1:] == tok.token_to_id(PAD)).all()


def test_truncation_keeps_only_pairs_with_completion_tokens(tok):
    prompt_len = len(tok.encode(PAIRS[0][0]).ids)
    with pytest.raises(DataError, match="shorten the prompts"):
        encode_sft_pairs(tok, PAIRS[:2], prompt_len - 1)
    ids, targets = encode_sft_pairs(tok, PAIRS[:2], prompt_len)  # one completion token fits
    assert (targets != IGNORE_INDEX).sum(dim=1).tolist() == [1, 1]


def test_sft_loss_ignores_prompt_logits(tok):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2,
                          n_embd=16, dropout=0.0, bias=True)).eval()
    ids, targets = encode_sft_pairs(tok, PAIRS[:4], 32)
    logits, _ = model(ids, targets)
    keep = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(sft_loss(model, ids, targets), expected, atol=1e-5)


def _toy_model(tok) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=2, n_head=2,
                         n_embd=32, dropout=0.0, bias=True))


def test_loss_decreases_on_toy_set_and_a_resumed_run_only_runs_the_remaining_steps(tok, tmp_path):
    model = _toy_model(tok)
    ids, targets = encode_sft_pairs(tok, PAIRS, 32)
    with torch.no_grad():
        before = sft_loss(model.eval(), ids, targets).item()
    cfg = load_params(PROJECT_ROOT / "params.yaml").finetune.model_copy(update=dict(
        max_steps=60, batch_size=16, lr=3e-3, base_lr_factor=1.0, weight_decay=0.0,
        warmup_steps=5, seed=0, checkpoints=2))
    result = finetune_sft(model, tok, PAIRS, cfg, tmp_path / "sft", device_name="cpu")
    with torch.no_grad():
        after = sft_loss(result.model.eval(), ids, targets).item()
    assert result.examples == len(PAIRS)
    assert (result.loop.steps, result.loop.resumed_from) == (60, 0)
    assert after < 0.6 * before, (before, after)
    assert (tmp_path / "sft" / "model.safetensors").is_file()
    ckpts = tmp_path / "sft" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["ckpt-00000030", "ckpt-00000060"]

    # Interrupted after the mid-run checkpoint: the rerun resumes there, runs only the 30 steps
    # left and ends where the uninterrupted run did.
    shutil.rmtree(ckpts / "ckpt-00000060")
    resumed = finetune_sft(_toy_model(tok), tok, PAIRS, cfg, tmp_path / "sft", device_name="cpu")
    assert (resumed.loop.steps, resumed.loop.resumed_from) == (30, 30)
    for (name, a), (_, b) in zip(result.model.state_dict().items(),
                                 resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    # Finished: nothing left to run.
    again = finetune_sft(_toy_model(tok), tok, PAIRS, cfg, tmp_path / "sft", device_name="cpu")
    assert (again.loop.steps, again.loop.resumed_from) == (0, 60)


def test_batched_completions_equal_one_prompt_at_a_time(tok):
    """Prompts of different lengths batched with left padding: each row computes what it would
    alone; prompts whose window slides (prompt + new tokens over block_size) too."""
    from gpt.evaluate import complete

    model = _toy_model(tok).eval()
    long = [" ".join([p] * 3) for p, _ in PAIRS[:3]]  # over 20 tokens: 12 new ones slide
    prompts = [p for p, _ in PAIRS[:20]] + ["Q:", "Q: what", *long]
    one = complete(model, tok, prompts, 12, batch_size=1)
    many = complete(model, tok, prompts, 12, batch_size=8)
    assert many == one
    assert len({len(tok.encode(p).ids) for p in prompts}) > 2  # padding in a batch
    assert all(len(tok.encode(p).ids) + 12 > 32 for p in long)
    assert any(one)  # a random model still generates something to compare
