"""A GPT decoder that reads top to bottom (nanoGPT-style).

Token + learned position embeddings, pre-LN blocks with causal self-attention through
``scaled_dot_product_attention`` (flash/memory-efficient kernels where available), a GELU MLP,
weight tying and GPT-2's scaled residual init. ``generate`` samples with a preallocated KV
cache, a batch of prompts of different lengths at once (left padding). For training, the
output layer and the loss are fused (``gpt.loss``): one (N, vocab) buffer and a lean backward.

The embedding may hold more rows than the vocabulary (``vocab_multiple``, e.g. GPT-2's 50257
rounded up to 50304 for GPU-friendly shapes). Padded rows are never looked up, and their logits
are cut off before anything reads them: outputs, losses and samples are over the real
vocabulary only, exactly as without padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt.loss import cross_entropy, linear_cross_entropy


@dataclass
class GPTConfig:
    """Architecture hyper-parameters (filled from ``gpt.config.ModelConfig``)."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    #: embedding rows = vocab_size rounded up to a multiple of this (1 = no padding)
    vocab_multiple: int = 1

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the (tied) embedding and output layer: ``vocab_size`` rounded up."""
        m = max(1, self.vocab_multiple)
        return -(-self.vocab_size // m) * m


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0
        self.n_head = cfg.n_head
        # One matmul for q, k, v: fewer kernel launches than three.
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (True = may attend) replaces the plain causal mask (see ``attention_mask``)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU, so HF export matches exactly
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, mask)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Keys and values of every layer, preallocated for up to ``block_size`` positions.

    Decoding writes each step's keys/values in place instead of concatenating (which would copy
    the whole cache every step). Buffers are (n_layer, B, n_head, capacity, head_dim); the first
    ``length`` positions are filled.
    """

    def __init__(self, cfg: GPTConfig, batch: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, capacity: int | None = None,
                 packed: bool = False) -> None:
        """Empty buffers for ``capacity`` positions (default and maximum: ``block_size``;
        ``packed``: no maximum, for several sequences packed in one row, each token given its
        own position and mask by :meth:`GPT.hidden_states`)."""
        size = capacity or cfg.block_size
        size = size if packed else min(size, cfg.block_size)
        shape = (cfg.n_layer, batch, cfg.n_head, size, cfg.n_embd // cfg.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0
        self.capacity = size

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, n_head, T, head_dim) keys/values after ``length``; return all."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


def attention_mask(past: int, T: int, pad: torch.Tensor | None, device: torch.device,
                   ) -> torch.Tensor | None:
    """Which keys each of ``T`` new queries may attend to (True), after ``past`` cached ones.

    None when the plain causal mask is right: no cache before them, or one new query that sees
    everything cached. With a cache, the new queries sit at the end of the key sequence (a plain
    causal mask would align them to the start), so the offset mask is built explicitly. With
    ``pad`` (B,), row b's first ``pad[b]`` positions are left padding: no query attends to them,
    except a padding query to itself (a row of nothing but masked keys would give NaN; padding
    outputs are never read). Returns (T, S) or, with ``pad``, (B, 1, T, S).
    """
    if pad is None and (past == 0 or T == 1):
        return None
    S = past + T
    q = torch.arange(past, S, device=device)[:, None]
    k = torch.arange(S, device=device)[None, :]
    causal = k <= q
    if pad is None:
        return causal
    return (causal & ((k >= pad[:, None, None]) | (k == q)))[:, None]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        # Weight tying: input and output embeddings share one matrix (fewer parameters, and the
        # output layer benefits from the embedding's gradient signal).
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # Scaled init of residual projections (GPT-2): keeps the residual stream's variance from
        # growing with depth, since each block adds two projections into it.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.padded_vocab_size > cfg.vocab_size:
            with torch.no_grad():  # padding rows: never used, kept at zero
                self.lm_head.weight[cfg.vocab_size:].zero_()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default (as in the GPT-2 paper)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden_states(self, idx: torch.Tensor, cache: KVCache | None = None,
                      *, pad: torch.Tensor | None = None, pos: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache | None]:
        """Final-layer-norm hidden states (B, T, C) and the cache, updated in place.

        With a ``cache``, ``idx`` continues the ``cache.length`` positions it already holds.
        ``pad`` (B,) counts each row's left padding: its real tokens take positions from 0 and
        never attend to the padding, so a padded row computes what it would alone. Several
        sequences packed in one row (e.g. lm-eval's requests in ``gpt.harness``) give instead
        each token its position ``pos`` (B, T) and which keys each query sees, ``mask``
        (B, 1, T, keys; True = attend).
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if pos is not None and int(pos.max()) >= self.config.block_size:
            raise ValueError(f"position {int(pos.max())} exceeds block_size "
                             f"{self.config.block_size}")
        if pos is None and past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size "
                             f"{self.config.block_size}")
        if cache is not None and past + T > cache.capacity:
            raise ValueError(f"sequence of {past + T} tokens exceeds the cache's capacity "
                             f"{cache.capacity}")
        if pos is None:
            pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
            if pad is not None:
                pos = (pos - pad[:, None]).clamp(min=0)  # (B, T): padding sits at position 0
        if mask is None:
            mask = attention_mask(past, T, pad, idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, mask)
        if cache is not None:
            cache.length += T
        return self.transformer.ln_f(x), cache

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Output-layer logits of hidden states ``x`` (..., C) over the real vocabulary."""
        out = self.lm_head(x)
        V = self.config.vocab_size
        return out[..., :V] if out.size(-1) != V else out

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                return_logits: bool = True,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, vocab) and, given targets, the mean cross-entropy (-1 = ignored).

        Without targets only the last position's logits are computed (inference). With targets
        and ``return_logits=False`` (what training uses) the logits are not kept: the loss is
        computed by a fused head that needs one (N, vocab) buffer instead of three, and the
        first element of the result is None.
        """
        x, _ = self.hidden_states(idx)
        if targets is None:
            # Inference: only the last position's logits are needed.
            return self.logits(x[:, [-1], :]), None
        if not return_logits and type(self.lm_head) is nn.Linear:  # not when wrapped (LoRA)
            weight = self.lm_head.weight
            if weight.size(0) != self.config.vocab_size:  # padding rows take no part
                weight = weight[:self.config.vocab_size]
            loss = linear_cross_entropy(x.reshape(-1, x.size(-1)), weight, targets.reshape(-1))
            return None, loss
        logits = self.logits(x)
        loss = cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @staticmethod
    def _sample(logits: torch.Tensor, temperature: float, top_k: int | None,
                top_p: float | None, generator: torch.Generator | None) -> torch.Tensor:
        if temperature <= 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # Drop tokens once the mass before them already exceeds top_p (keeps at least one).
            drop = (cum - sorted_logits.softmax(dim=-1)) > top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)

    @torch.no_grad()
    def generate_stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None,
                        stop_token: int | None = None, use_cache: bool = True,
                        generator: torch.Generator | None = None,
                        pad: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """Yield the next token (B, 1) of each prompt in the batch, one step at a time.

        With ``use_cache`` the prompt is encoded once and each step feeds one token; when the
        context would exceed ``block_size`` the window slides and the cache is rebuilt.
        Rows that produced ``stop_token`` keep yielding it; iteration ends when all have.
        ``pad`` (B,): prompts of different lengths, left-padded to one (see ``hidden_states``).
        A padded row generates what it would alone while padding + prompt + new tokens fit in
        ``block_size`` (beyond it, its window slides earlier than it would alone).
        """
        was_training = self.training
        self.eval()
        block = self.config.block_size
        B, T0 = idx.shape
        # Prompt and generated tokens live in one preallocated buffer: no per-step concatenation.
        tokens = torch.empty(B, T0 + max_new_tokens, dtype=idx.dtype, device=idx.device)
        tokens[:, :T0] = idx
        n = T0
        cache = (KVCache(self.config, B, idx.device, self.lm_head.weight.dtype,
                         capacity=T0 + max_new_tokens) if use_cache else None)
        done = torch.zeros(B, 1, dtype=torch.bool, device=idx.device)
        try:
            for _ in range(max_new_tokens):
                if cache is not None and 0 < cache.length < cache.capacity:
                    x, _ = self.hidden_states(tokens[:, n - 1:n], cache, pad=pad)
                else:
                    # First step, no cache, or a full window: (re)encode the last block_size
                    # tokens. Once the window is full it slides, so each step re-encodes.
                    if cache is not None:
                        cache.length = 0
                    start = max(0, n - block)
                    left = None if pad is None else (pad - start).clamp(min=0)
                    x, _ = self.hidden_states(tokens[:, start:n], cache, pad=left)
                logits = self.logits(x[:, -1, :])
                nxt = self._sample(logits, temperature, top_k, top_p, generator)
                if stop_token is not None:
                    nxt = torch.where(done, torch.full_like(nxt, stop_token), nxt)
                    done = done | (nxt == stop_token)
                tokens[:, n:n + 1] = nxt
                n += 1
                yield nxt
                if stop_token is not None and bool(done.all()):
                    break
        finally:
            self.train(was_training)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 stop_token: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None,
                 pad: torch.Tensor | None = None) -> torch.Tensor:
        """Return the prompts (B, T) followed by up to ``max_new_tokens`` sampled tokens."""
        steps = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p,
                                          stop_token, use_cache, generator, pad))
        return torch.cat([idx, *steps], dim=1) if steps else idx
