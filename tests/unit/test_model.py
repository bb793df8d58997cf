"""Behavioural tests of the GPT model: causality, init loss, KV cache, sampling, HF parity."""

import math

import pytest
import torch

from gpt.model import GPT, GPTConfig


def tiny(vocab=97, block=32, bias=True, dropout=0.0) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=16,
                         dropout=dropout, bias=bias)).eval()


def full_logits(m: GPT, x: torch.Tensor) -> torch.Tensor:
    return m.lm_head(m.hidden_states(x)[0])


def test_future_tokens_do_not_change_past_logits():
    m = tiny()
    x = torch.randint(0, 97, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 97, (2, 8))
    a, b = full_logits(m, x), full_logits(m, y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_loss_at_init_is_about_ln_vocab():
    m = tiny(vocab=512)
    x = torch.randint(0, 512, (4, 32))
    _, loss = m(x, torch.randint(0, 512, (4, 32)))
    assert abs(float(loss) - math.log(512)) < 0.3


def test_ignore_index_excludes_targets():
    m = tiny()
    x = torch.randint(0, 97, (1, 10))
    t = torch.full((1, 10), -1)
    t[0, -1] = 5
    _, loss = m(x, t)
    logits = full_logits(m, x)
    expected = torch.nn.functional.cross_entropy(logits[0, -1:], torch.tensor([5]))
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("prompt_len", [1, 7, 31])
def test_kv_cache_matches_no_cache_greedy(prompt_len):
    m = tiny()
    x = torch.randint(0, 97, (3, prompt_len))
    a = m.generate(x, 20, temperature=0)  # crosses block_size for long prompts: window slides
    b = m.generate(x, 20, temperature=0, use_cache=False)
    assert torch.equal(a, b)
    assert a.shape == (3, prompt_len + 20)


def test_stop_token_ends_generation_and_pads_finished_rows():
    m = tiny()
    x = torch.randint(0, 97, (2, 4))
    first = m.generate(x, 1, temperature=0)[:, -1]
    out = m.generate(x, 10, temperature=0, stop_token=int(first[0]))
    assert out[0, 4] == first[0]
    assert (out[0, 4:] == first[0]).all()


def test_top_k_one_equals_greedy_and_seed_is_reproducible():
    m = tiny()
    x = torch.randint(0, 97, (1, 5))
    greedy = m.generate(x, 10, temperature=0)
    topk1 = m.generate(x, 10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy, topk1)
    s1 = m.generate(x, 10, top_p=0.9, generator=torch.Generator().manual_seed(3))
    s2 = m.generate(x, 10, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2)


def test_weight_tying_and_dropout_off_in_eval():
    m = tiny(dropout=0.5)
    assert m.lm_head.weight is m.transformer.wte.weight
    x = torch.randint(0, 97, (1, 8))
    assert torch.equal(full_logits(m, x), full_logits(m, x))


@pytest.mark.parametrize("bias", [True, False])
def test_hf_export_logits_parity_and_round_trip(bias):
    from gpt.hf import from_hf_lm, to_hf_lm

    m = tiny(bias=bias)
    hf = to_hf_lm(m, eot_id=0, pad_id=1)
    x = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        ours, theirs = full_logits(m, x), hf(x).logits
    assert (ours - theirs).abs().max() < 1e-4
    back = from_hf_lm(hf)
    with torch.no_grad():
        assert (full_logits(back, x) - ours).abs().max() < 1e-5


def test_too_long_sequence_is_a_clear_error():
    m = tiny(block=8)
    with pytest.raises(ValueError, match="exceeds block_size"):
        m(torch.zeros(1, 9, dtype=torch.long))


def test_lean_cross_entropy_matches_torch_in_value_and_gradient():
    from torch.nn import functional as F

    from gpt.model import _CrossEntropy

    torch.manual_seed(0)
    logits = torch.randn(12, 50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (12,))
    targets[[2, 7]] = -1  # ignored positions (e.g. masked prompt tokens)
    ours = _CrossEntropy.apply(logits, targets)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits, targets, ignore_index=-1)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref) and torch.allclose(g_ours, g_ref, atol=1e-12)
    assert g_ours[[2, 7]].abs().max() == 0
