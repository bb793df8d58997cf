"""Next-token cross-entropy for training, with a lean backward (targets of -1 are ignored).

``linear_cross_entropy`` fuses the output layer and the loss: the (N, vocab) logits, the largest
tensor of a training step, live in one buffer that becomes the probabilities and then the
gradient in place, instead of three (logits, probabilities, gradient). ``cross_entropy`` is the
same loss over given logits (used when the output layer is wrapped, e.g. by LoRA). Both equal
``F.cross_entropy(..., ignore_index=-1)`` in value and gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_TINY_PROB = 1e-30  # below this, -log(p) of a float32 probability loses precision


def before_compile() -> None:
    """Call before ``torch.compile`` of a model that uses this loss: keeps :func:`_nll_sum`
    (whose data-dependent fallback would break a compiled graph anyway) out of the graph.

    Not done at import with ``@torch.compiler.disable``: that imports ``torch._dynamo``, ~1.2 s in
    every process that imports the model, compiled or not (a run, a data stage, ``generate``).
    Without this call a compiled model still computes the same loss, with a graph break.
    """
    global _nll_sum
    if not getattr(_nll_sum, "_gptops_not_compiled", False):
        _nll_sum = torch.compiler.disable(_nll_sum)
        _nll_sum._gptops_not_compiled = True  # type: ignore[attr-defined]


def _targets(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather-safe target columns (N, 1), the mask of counted targets (-1 = ignored), and
    their number."""
    valid = targets != -1
    return targets.clamp(min=0).unsqueeze(1), valid, valid.sum()


def _nll_sum(probs: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor,
             row_logits: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum over counted rows of -log p(target), from softmax probabilities (N, vocab).

    Taking the log of the target's probability avoids a log-softmax pass over the whole
    (N, vocab) tensor. Where that probability underflows (target logit ~70+ below the row's
    log-sum-exp, e.g. a diverging run) the rows are recomputed exactly by log-softmax over
    ``row_logits(rows)``, so the loss stays finite and exact, as ``F.cross_entropy``'s would.
    Ignored rows are neither recomputed nor counted (their placeholder target may well have
    probability 0).
    """
    target_p = probs.gather(1, safe).squeeze(1)
    nll = -target_p.log()
    tiny = (target_p < _TINY_PROB) & valid
    if bool(tiny.any()):
        rows = tiny.nonzero().squeeze(1)
        logp = torch.log_softmax(row_logits(rows).float(), dim=-1)
        nll[rows] = -logp.gather(1, safe[rows]).squeeze(1)
    return torch.where(valid, nll, 0.0).sum()


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the vocabulary in a new buffer; float32 for half-precision logits."""
    low = logits.dtype in (torch.float16, torch.bfloat16)  # e.g. under autocast
    return torch.softmax(logits, dim=-1, dtype=torch.float32 if low else None)


def _minus_one_hot(probs: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """softmax - one_hot(target), in place over ``probs``: the unscaled gradient."""
    return probs.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=probs.dtype))


def _row_scale(valid: torch.Tensor, count: torch.Tensor, grad_loss: torch.Tensor) -> torch.Tensor:
    """(N, 1) factors of the mean loss's gradient: grad / count, 0 for ignored targets."""
    return (valid * (grad_loss / count)).unsqueeze(1)


class CrossEntropy(torch.autograd.Function):
    """Mean next-token cross-entropy of given logits (targets of -1 ignored), lean backward.

    ``F.cross_entropy`` runs log-softmax forward and, backward, allocates and zero-fills a
    (N, vocab) gradient, scatters into it and runs log-softmax's backward over it. Here the
    forward keeps the softmax (one pass) and the backward turns it into ``softmax - one_hot``
    in place. Being in place, a second backward through a retained graph raises autograd's
    error for a modified saved tensor instead of returning a wrong gradient.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        safe, valid, count = _targets(targets)
        probs = _softmax(logits)
        loss = _nll_sum(probs, safe, valid, logits.__getitem__) / count
        ctx.save_for_backward(probs, safe, valid, count)
        ctx.in_dtype = logits.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        probs, safe, valid, count = ctx.saved_tensors
        grad = _minus_one_hot(probs, safe).mul_(_row_scale(valid, count, grad_loss))
        return grad.to(ctx.in_dtype), None


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``x @ weight.T`` for training, where the logits are not wanted.

    The (N, vocab) logits are the largest tensor of a step. Here they are computed into one
    buffer that the softmax overwrites in place (on CPU) and the backward turns into the
    gradient in place: one (N, vocab) allocation instead of three (logits, probabilities,
    gradient), and the loss's per-row factors are applied to the (N, C) operands of the
    backward matmuls instead of to the gradient. The matmuls run in the logits' dtype (bf16
    under autocast), as autograd's would.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                ) -> torch.Tensor:
        safe, valid, count = _targets(targets)
        logits = x @ weight.t()
        if logits.device.type == "cpu" and logits.dtype == torch.float32:
            probs = torch.softmax(logits, dim=-1, out=logits)  # row-wise: safe to alias on CPU
        else:
            probs = _softmax(logits)
        loss = _nll_sum(probs, safe, valid, lambda rows: x[rows] @ weight.t()) / count
        ctx.save_for_backward(x, weight, probs, safe, valid, count)
        ctx.mm_dtype = logits.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor,
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, weight, probs, safe, valid, count = ctx.saved_tensors
        dt = ctx.mm_dtype
        # The per-row factor is applied to the (N, C) operands, not to the (N, vocab) gradient:
        # one pass over the largest tensor fewer.
        grad = _minus_one_hot(probs, safe).to(dt)
        scale = _row_scale(valid, count, grad_loss)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight.to(dt)).mul_(scale).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad.t() @ (x * scale).to(dt)).to(weight.dtype)
        return grad_x, grad_w, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (N, vocab) against ``targets`` (N,), -1 ignored."""
    return CrossEntropy.apply(logits, targets)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ) -> torch.Tensor:
    """Mean cross-entropy of the logits ``x @ weight.T`` (never kept), -1 targets ignored.

    ``x`` is (N, C) hidden states, ``weight`` the (vocab, C) output layer, ``targets`` (N,).
    """
    return LinearCrossEntropy.apply(x, weight, targets)
