"""LoRA: low-rank adapters on a GPT's linear layers, merged back into full weights.

``apply_lora`` freezes the model and wraps chosen ``nn.Linear`` layers so their output becomes
``W x + (alpha / r) * B A x`` with ``B`` zero-initialised (training starts from the base model
exactly). ``merge_lora`` folds ``(alpha / r) * B A`` into ``W`` and unwraps, so registered models
are plain GPTs that export to transformers unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

#: Linear layers adapted by default: attention in and out projections (the LoRA paper's choice).
DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-``r`` update."""

    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / r
        self.lora_a = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a) * self.scale
        return self.base


def apply_lora(model: nn.Module, r: int, alpha: float,
               targets: tuple[str, ...] = DEFAULT_TARGETS) -> int:
    """Freeze ``model`` and wrap matching linear layers; return the trainable parameter count."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and full.endswith(targets):
                setattr(module, child_name, LoRALinear(child, r, alpha))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore plain ``nn.Linear`` layers."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
