"""Evaluation: perplexity of the base, task metrics next to a baseline, sample generations."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer

from gpt.data.loader import TokenData
from gpt.data.tokenizer import EOT
from gpt.errors import RegistryError
from gpt.model import GPT
from gpt.train import estimate_loss

DEFAULT_PROMPTS = ["The", "Return a new", "This module provides", "If the argument is"]


def perplexity(model: GPT, tokens_dir: Path, batches: int, batch_size: int, seed: int,
               split: str = "val") -> dict[str, float]:
    """Validation loss and perplexity over fixed, seeded batches of held-out documents."""
    data = TokenData(tokens_dir)
    device = next(model.parameters()).device
    loss = estimate_loss(model, data, split, batches, batch_size, model.config.block_size, seed,
                         device)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                           labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 (as flat metric names)."""
    n = len(y_true)
    if n == 0:
        raise ValueError("no examples to evaluate")
    out: dict[str, float] = {"accuracy": sum(t == p for t, p in zip(y_true, y_pred,
                                                                    strict=True)) / n}
    f1s = []
    for i, name in enumerate(labels):
        tp = sum(t == i and p == i for t, p in zip(y_true, y_pred, strict=True))
        fp = sum(t != i and p == i for t, p in zip(y_true, y_pred, strict=True))
        fn = sum(t == i and p != i for t, p in zip(y_true, y_pred, strict=True))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out[f"precision_{name}"], out[f"recall_{name}"], out[f"f1_{name}"] = prec, rec, f1
        f1s.append(f1)
    out["macro_f1"] = sum(f1s) / len(f1s)
    return out


def majority_baseline(train_labels: Sequence[int], test_labels: Sequence[int],
                      labels: Sequence[str]) -> dict[str, float]:
    """Metrics of always predicting the most frequent training label."""
    majority = Counter(train_labels).most_common(1)[0][0]
    m = classification_metrics(test_labels, [majority] * len(test_labels), labels)
    return {"baseline_accuracy": m["accuracy"], "baseline_macro_f1": m["macro_f1"]}


def check_finite(metrics: dict[str, float], what: str) -> None:
    """Refuse to register on NaN/inf metrics."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise RegistryError(f"{what}: non-finite metrics {bad}; nothing was registered — check "
                            "the training logs (lower the learning rate?)")


@torch.no_grad()
def sample_generations(model: GPT, tok: Tokenizer, prompts: Sequence[str] = DEFAULT_PROMPTS,
                       max_new_tokens: int = 40, temperature: float = 0.8, top_k: int = 50,
                       seed: int = 0) -> list[dict[str, str]]:
    """Generate a continuation for each prompt (seeded, so versions are comparable)."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for prompt in prompts:
        ids = tok.encode(prompt).ids or [tok.token_to_id(EOT)]
        x = torch.tensor([ids], dtype=torch.long, device=device)
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k,
                           stop_token=tok.token_to_id(EOT), generator=g)
        out.append({"prompt": prompt, "completion": tok.decode(y[0, len(ids):].tolist())})
    return out
