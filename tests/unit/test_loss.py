"""The lean cross-entropy of ``gpt.loss``: F.cross_entropy's value and gradient, exact on
underflow, ignored targets neither counted nor recomputed."""

import pytest
import torch
from torch.nn import functional as F

from gpt.loss import CrossEntropy, _nll_sum, cross_entropy, linear_cross_entropy


def test_lean_cross_entropy_matches_torch_in_value_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(12, 50, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (12,))
    targets[[2, 7]] = -1  # ignored positions (e.g. masked prompt tokens)
    ours = cross_entropy(logits, targets)
    (g_ours,) = torch.autograd.grad(ours, logits)
    ref = F.cross_entropy(logits, targets, ignore_index=-1)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref) and torch.allclose(g_ours, g_ref, atol=1e-12)
    assert g_ours[[2, 7]].abs().max() == 0


def test_fused_linear_cross_entropy_matches_torch_in_value_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 30, (10,))
    targets[[0, 4]] = -1
    ours = linear_cross_entropy(x, w, targets)
    g_ours = torch.autograd.grad(0.5 * ours, (x, w))
    ref = F.cross_entropy(x @ w.t(), targets, ignore_index=-1)
    g_ref = torch.autograd.grad(0.5 * ref, (x, w))
    assert torch.allclose(ours, ref)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_second_backward_through_a_retained_graph_is_an_error():
    """The backward works in place over the saved softmax: reusing it must fail loudly."""
    logits = torch.randn(4, 9, requires_grad=True)
    loss = CrossEntropy.apply(logits, torch.tensor([1, 2, 3, -1]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError):
        loss.backward()


def test_loss_stays_exact_when_the_target_probability_underflows():
    """Rows whose target is ~100 logits below the rest (a diverging run) would give -log(0) =
    inf from the softmax; they are recomputed by log-softmax, as F.cross_entropy would."""
    torch.manual_seed(0)
    x = torch.randn(6, 8) * 30
    w = torch.randn(11, 8)
    logits = x @ w.t()
    targets = logits.argmin(dim=1)
    targets[1] = logits[1].argmax()  # one ordinary row
    ref = F.cross_entropy(logits, targets)
    assert float(torch.softmax(logits, -1).gather(1, targets[:, None]).min()) == 0.0
    for loss in (cross_entropy(logits, targets), linear_cross_entropy(x, w, targets)):
        assert torch.isfinite(loss) and torch.allclose(loss, ref, rtol=1e-5)


def test_ignored_rows_are_neither_recomputed_nor_counted():
    """Ignored positions (SFT prompts) gather a placeholder target whose probability may be 0:
    they must not cost a recomputation each step nor turn the loss into NaN (0 * inf)."""
    logits = torch.randn(5, 7)
    logits[:, 0] = -1e4  # placeholder column: probability exactly 0
    targets = torch.tensor([-1, -1, 3, -1, 0])  # row 4 is counted and does underflow
    probs = torch.softmax(logits, -1)
    recomputed = []

    def row_logits(rows: torch.Tensor) -> torch.Tensor:
        recomputed.extend(rows.tolist())
        return logits[rows]

    valid = targets != -1
    total = _nll_sum(probs, targets.clamp(min=0).unsqueeze(1), valid, row_logits)
    ref = F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum")
    assert recomputed == [4] and torch.allclose(total, ref)
