"""Behavioural tests of the GPT model: causality, init loss, KV cache, sampling, HF parity, and
the fused training head through the model (the loss itself: tests/unit/test_loss.py)."""

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


def _model_grads(m: GPT, x: torch.Tensor, y: torch.Tensor, **kw) -> tuple[torch.Tensor, dict]:
    m.zero_grad(set_to_none=True)
    logits, loss = m(x, y, **kw)
    loss.backward()
    return logits, loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


def test_training_head_without_logits_matches_cross_entropy_through_the_model():
    """``return_logits=False`` (what training uses) gives F.cross_entropy's loss and the same
    gradients for every parameter, tied embedding included, with ignored targets."""
    from torch.nn import functional as F

    m = tiny().double().train()
    x = torch.randint(0, 97, (3, 20))
    y = torch.randint(0, 97, (3, 20))
    y[0, :5] = -1
    logits, loss, grads = _model_grads(m, x, y)
    none, fused_loss, fused_grads = _model_grads(m, x, y, return_logits=False)
    assert none is None and logits.shape == (3, 20, 97)
    m.zero_grad(set_to_none=True)
    ref = F.cross_entropy(full_logits(m, x).view(-1, 97), y.view(-1), ignore_index=-1)
    ref.backward()
    assert torch.allclose(loss, ref.detach()) and torch.allclose(fused_loss, ref.detach())
    for name, p in m.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-12), name
        assert torch.allclose(fused_grads[name], p.grad, atol=1e-12), name
    # A scaled loss (gradient accumulation divides by the number of micro-batches) scales the
    # gradients: the upstream gradient reaches both backward matmuls.
    m.zero_grad(set_to_none=True)
    (0.25 * m(x, y, return_logits=False)[1]).backward()
    for name, p in m.named_parameters():
        assert torch.allclose(p.grad, 0.25 * fused_grads[name], atol=1e-12), name


def test_training_head_overwrites_logits_in_place_and_stays_exact_in_float32():
    """On CPU in float32 the fused head's softmax overwrites its logits buffer; the loss and
    gradients still equal the plain path's to float32 rounding, and eval mode works too."""
    m = tiny().train()
    x = torch.randint(0, 97, (4, 32))
    _, loss, grads = _model_grads(m, x, x)
    _, fused_loss, fused_grads = _model_grads(m, x, x, return_logits=False)
    assert abs(float(loss) - float(fused_loss)) < 1e-6
    for name in grads:
        assert torch.allclose(grads[name], fused_grads[name], atol=1e-6), name
    with torch.no_grad():
        assert torch.allclose(m(x, x, return_logits=False)[1], loss, atol=1e-6)


def test_training_head_under_bf16_autocast_returns_float32_gradients():
    m = tiny().train()
    x = torch.randint(0, 97, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss, grads = _model_grads(m, x, x)
        _, fused_loss, fused_grads = _model_grads(m, x, x, return_logits=False)
    assert fused_loss.dtype == torch.float32
    assert abs(float(loss) - float(fused_loss)) < 1e-3
    w = "transformer.wte.weight"
    assert fused_grads[w].dtype == torch.float32
    assert torch.allclose(fused_grads[w], grads[w], atol=1e-4, rtol=1e-2)


def test_training_head_falls_back_to_logits_when_the_output_layer_is_wrapped():
    """LoRA on ``lm_head`` replaces the Linear; the fused head must not bypass the adapter."""
    from gpt.lora import apply_lora

    m = tiny().train()
    apply_lora(m, r=2, alpha=4, targets=("lm_head",))
    torch.nn.init.normal_(m.lm_head.lora_b)
    x = torch.randint(0, 97, (2, 16))
    logits, loss = m(x, x)
    _, fused_loss = m(x, x, return_logits=False)
    assert torch.allclose(loss, fused_loss)


def test_left_padded_batch_generates_what_each_prompt_would_alone():
    """Prompts of different lengths, left-padded into one batch (``pad``), give each prompt's own
    greedy tokens, with and without the cache, and the real positions' logits of each alone."""
    m = tiny()
    torch.manual_seed(1)
    prompts = [torch.randint(1, 97, (n,)) for n in (1, 4, 9, 5)]
    width = max(len(p) for p in prompts)
    pad = torch.tensor([width - len(p) for p in prompts])
    x = torch.stack([torch.cat([torch.zeros(width - len(p), dtype=torch.long), p])
                     for p in prompts])
    cached = m.generate(x, 12, temperature=0, pad=pad)[:, width:]
    uncached = m.generate(x, 12, temperature=0, pad=pad, use_cache=False)[:, width:]
    alone = [m.generate(p[None], 12, temperature=0, use_cache=False)[0, len(p):] for p in prompts]
    assert torch.equal(cached, torch.stack(alone)) and torch.equal(uncached, cached)
    h, _ = m.hidden_states(x, pad=pad)
    for r, p in enumerate(prompts):
        assert torch.allclose(m.lm_head(h[r, pad[r]:]), full_logits(m, p[None])[0], atol=1e-5)
    assert torch.isfinite(h).all()  # padding queries attend to themselves: no NaN


def test_left_padded_window_slides_alike_with_and_without_cache():
    m = tiny()
    x = torch.randint(1, 97, (2, 30))
    pad = torch.tensor([0, 20])
    a = m.generate(x, 12, temperature=0, pad=pad)  # past block_size 32: the window slides
    b = m.generate(x, 12, temperature=0, pad=pad, use_cache=False)
    assert torch.equal(a, b)
