"""gptops' own lm-evaluation-harness model: :class:`gpt.model.GPT` scored in place.

``GPTLM`` is an ``lm_eval`` ``TemplateLM`` (registered as ``gptops``) over a live GPT and the
workspace's tokenizer, so scoring needs no export to a Hugging Face folder. It gives the numbers
lm-eval's own ``HFLM`` gives on the ``gptops export`` of the same model (tests/integration/
test_harness_parity.py holds it to that, within 1e-4), by the same rules: the same tokenization
(context/continuation split, the prefix token for an empty context), left truncation to the
context window, ``loglikelihood_rolling``'s windows (``lm_eval.utils.get_rolling_token_windows``
with ``make_disjoint_window``), ``generate_until``'s stop sequences, ``max_gen_toks`` and
context truncation. What it does differently is only how it computes them:

- **a context is encoded once** for all the continuations that share it (a multiple-choice
  item's endings): its keys and values go into a :class:`gpt.model.KVCache`, copied to each
  continuation's row;
- **the output layer runs only where a token is scored** (HFLM computes logits and a
  log-softmax over the vocabulary at every position of every row);
- **generation is batched with the KV cache**, prompts of different lengths left-padded with
  their own positions and attention masks, each row stopping at its own stop sequence.

lm-eval is imported only here (and by :mod:`gpt.benchmarks`), only when benchmarks run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch.nn import functional as F

from gpt.model import GPT, KVCache

#: (request strings, context tokens, continuation tokens): what TemplateLM hands over.
Request = tuple[Any, list[int], list[int]]


@register_model("gptops")
class GPTLM(TemplateLM):
    """A GPT and its tokenizer as an lm-eval model.

    Args:
        model: the GPT to score (put in eval mode; moved to ``device`` when one is given).
        tokenizer: the workspace tokenizer as a ``transformers`` fast tokenizer
            (:func:`gpt.data.tokenizer.load_hf_tokenizer`: the one every export carries).
        batch_size: requests per forward pass (continuations, rolling windows or prompts).
        device: where to score (None: where the model is).
        max_gen_toks: ``generate_until``'s default length when a task sets none (HFLM's 256).
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Any,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        max_gen_toks: int = 256,
    ) -> None:
        super().__init__()
        if device is not None:
            model.to(device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self._device = next(model.parameters()).device
        self._max_gen_toks = max_gen_toks

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> GPTLM:
        """``lm-eval --model gptops --model_args pretrained=<gptops export folder>``."""
        from lm_eval.utils import simple_parse_args_string
        from transformers import AutoTokenizer, GPT2LMHeadModel

        from gpt.hf import from_hf_lm

        args = {
            **simple_parse_args_string(arg_string),
            **{k: v for k, v in (additional_config or {}).items() if v is not None},
        }
        folder = args.pop("pretrained")
        model = from_hf_lm(GPT2LMHeadModel.from_pretrained(folder))
        return cls(
            model,
            AutoTokenizer.from_pretrained(folder),
            batch_size=int(args.get("batch_size") or 16),
            device=args.get("device"),
        )

    # --- what lm-eval asks of a model ---------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """The context of an empty context: BOS, else EOS (HFLM's rule)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        """The context window: the model's ``block_size`` (an export's ``n_positions``)."""
        return self.model.config.block_size

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return type(self.tokenizer).__name__

    def get_model_info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "model_num_parameters": self.model.num_params(non_embedding=False),
            "model_dtype": str(self.model.lm_head.weight.dtype),
            "model_shape": f"{cfg.n_layer}x{cfg.n_embd}, block {cfg.block_size}",
        }

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """As HFLM: the tokenizer's own special-token rule, none when the text starts with the
        prefix token."""
        special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and string.startswith(
            self.tokenizer.decode(self.prefix_token_id)
        ):
            special = {"add_special_tokens": False}
        ids = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # --- loglikelihood ----------------------------------------------------------------------

    @torch.no_grad()
    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether each of its tokens is the
        greedy one) per request, in the requests' order.

        A request's tokens are cut from the left to ``max_length + 1`` (HFLM's truncation);
        what precedes the continuation then is its prefix. Requests are grouped by prefix, each
        prefix encoded once; batches hold up to ``batch_size`` continuations and fit the
        context window (longest prefix + longest continuation).
        """
        L = self.max_length
        groups: dict[tuple[int, ...], list[int]] = {}
        conts: list[list[int]] = []
        for i, (_, ctx, cont) in enumerate(requests):
            if not ctx or not cont or len(cont) > L:
                raise ValueError(
                    f"lm-eval request {i}: a context and a continuation of 1 to "
                    f"{L} tokens are needed (got {len(ctx)} and {len(cont)})"
                )
            full = (ctx + cont)[-(L + 1) :]
            groups.setdefault(tuple(full[: len(full) - len(cont)]), []).append(i)
            conts.append(cont)
        out: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        batch: list[tuple[int, ...]] = []
        rows = 0
        for prefix in sorted(groups, key=lambda p: (-len(p), p)):
            if batch and rows + len(groups[prefix]) > self.batch_size:
                self._score(batch, groups, conts, out)
                batch, rows = [], 0
            batch.append(prefix)
            rows += len(groups[prefix])
        if batch:
            self._score(batch, groups, conts, out)
        return out

    def _score(
        self,
        prefixes: list[tuple[int, ...]],
        groups: dict[tuple[int, ...], list[int]],
        conts: list[list[int]],
        out: list[tuple[float, bool]],
    ) -> None:
        """Score the continuations of ``prefixes`` (longest first) into ``out``.

        The prefixes run as one batch (right-padded: causal, so padding is never seen), their
        keys and values kept; then every continuation's tokens but its last, packed in one row
        without padding, attend to their own prefix's cached keys and to their own earlier
        tokens. The output layer runs on the scored positions only.
        """
        model, dev = self.model, self.device
        P, Tp = len(prefixes), len(prefixes[0])
        plen = torch.tensor([len(p) for p in prefixes], device=dev)
        idx = torch.zeros(P, Tp, dtype=torch.long, device=dev)
        for r, p in enumerate(prefixes):
            idx[r, : len(p)] = torch.tensor(p, device=dev)
        reqs = [(r, i) for r, p in enumerate(prefixes) for i in groups[p]]
        cache = KVCache(model.config, P, dev, model.lm_head.weight.dtype, capacity=Tp)
        hp, _ = model.hidden_states(idx, cache)
        last = hp[torch.arange(P, device=dev), plen - 1]  # predicts each continuation's first
        rest = [conts[i][:-1] for _, i in reqs]
        packed = self._continue(cache, plen, [r for r, _ in reqs], rest) if any(rest) else None
        # (request, token) in order: the first from its prefix, the others from the packed row
        hidden, targets, owner, at = [], [], [], 0
        for k, (r, i) in enumerate(reqs):
            n = len(conts[i])
            hidden.append(last[r : r + 1])
            if n > 1:
                hidden.append(packed[at : at + n - 1])
                at += n - 1
            targets.extend(conts[i])
            owner.extend([k] * n)
        logp = F.log_softmax(model.logits(torch.cat(hidden)).float(), dim=-1)
        tgt = torch.tensor(targets, device=dev)
        picked = logp.gather(1, tgt[:, None])[:, 0]
        greedy = logp.argmax(dim=-1) == tgt
        who = torch.tensor(owner, device=dev)
        sums = torch.zeros(len(reqs), device=dev, dtype=picked.dtype).index_add_(0, who, picked)
        misses = torch.zeros(len(reqs), device=dev).index_add_(0, who, (~greedy).float())
        for (_, i), s, m in zip(reqs, sums.tolist(), misses.tolist(), strict=True):
            out[i] = (s, m == 0)

    def _continue(
        self, cache: KVCache, plen: torch.Tensor, rows: list[int], tokens: list[list[int]]
    ) -> torch.Tensor:
        """Hidden states (N, C) of ``tokens`` (one list per request, packed in that order),
        request ``k`` continuing prefix row ``rows[k]`` of ``cache``."""
        model, dev = self.model, self.device
        nl, P, H, Tp, hd = cache.k.shape
        N = sum(len(t) for t in tokens)
        flat = KVCache(model.config, 1, dev, cache.k.dtype, capacity=P * Tp + N, packed=True)
        # the P prefixes' keys side by side in one row: prefix r at [r * Tp, r * Tp + plen[r])
        flat.k[:, 0, :, : P * Tp] = cache.k.transpose(1, 2).reshape(nl, H, P * Tp, hd)
        flat.v[:, 0, :, : P * Tp] = cache.v.transpose(1, 2).reshape(nl, H, P * Tp, hd)
        flat.length = P * Tp
        idx = torch.tensor([t for ts in tokens for t in ts], device=dev)[None]
        req = torch.tensor([k for k, ts in enumerate(tokens) for _ in ts], device=dev)
        off = torch.tensor([j for ts in tokens for j in range(len(ts))], device=dev)
        row = torch.tensor(rows, device=dev)[req]
        pos = plen[row] + off
        keys = torch.arange(P * Tp, device=dev)
        own_prefix = (keys[None] // Tp == row[:, None]) & (keys[None] % Tp < plen[row][:, None])
        own_past = (req[None] == req[:, None]) & (off[None] <= off[:, None])
        mask = torch.cat([own_prefix, own_past], dim=1)
        x, _ = model.hidden_states(idx, flat, pos=pos[None], mask=mask[None, None])
        return x[0]

    def loglikelihood_rolling(
        self,
        requests: list[Any],
        disable_tqdm: bool = False,
    ) -> list[float]:
        """A whole text's log-likelihood in HFLM's windows: ``max_length`` tokens each, the
        first after the prefix token, each later one after the token before it."""
        windows: list[Request] = []
        counts = []
        for (text,) in (r.args for r in requests):
            ws = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            windows += [(None, ctx, cont) for ctx, cont in ws]
            counts.append(len(ws))
        scores = self._loglikelihood_tokens(windows)
        out, at = [], 0
        for n in counts:
            out.append(sum(s for s, _ in scores[at : at + n]))
            at += n
        return out

    # --- generation -------------------------------------------------------------------------

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation up to its first stop sequence (EOS always one), at most
        ``max_gen_toks`` tokens, the context cut from the left to leave room for them.
        Requests with the same generation settings run together, longest prompts first."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        by_kwargs: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_kwargs.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        for members in by_kwargs.values():
            kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            n_new = int(kwargs.pop("max_gen_toks"))
            room = self.max_length - n_new
            if room <= 0:
                raise ValueError(
                    f"max_gen_toks={n_new} leaves no room for a context in the "
                    f"model's {self.max_length} positions"
                )
            prompts = {i: self.tok_encode(requests[i].args[0])[-room:] for i in members}
            order = sorted(members, key=lambda i: (-len(prompts[i]), requests[i].args[0]))
            for at in range(0, len(order), self.batch_size):
                chunk = order[at : at + self.batch_size]
                texts = self._generate([prompts[i] for i in chunk], n_new, until, kwargs)
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = postprocess_generated_text(text, until, None)
        return out

    @torch.no_grad()
    def _generate(
        self, prompts: list[list[int]], n_new: int, until: list[str], kwargs: dict[str, Any]
    ) -> list[str]:
        """Decoded continuations of a batch of prompts (left-padded, KV cache); a row stops at
        EOS, at a stop sequence in its text, or after ``n_new`` tokens."""
        model, dev = self.model, self.device
        B, T = len(prompts), max(len(p) for p in prompts)
        pad = torch.tensor([T - len(p) for p in prompts], device=dev)
        idx = torch.zeros(B, T, dtype=torch.long, device=dev)
        for r, p in enumerate(prompts):
            idx[r, T - len(p) :] = torch.tensor(p, device=dev)
        keys = torch.arange(T + n_new, device=dev)
        steps = torch.arange(T, device=dev)
        pos = (steps[None, :] - pad[:, None]).clamp(min=0)
        # Each query sees its row's real keys up to itself (a padding query sees itself).
        mask = (keys[None, None, :T] <= steps[None, :, None]) & (
            (keys[None, None, :T] >= pad[:, None, None]) | (keys[:T] == steps[:, None])[None]
        )
        cache = KVCache(model.config, B, dev, model.lm_head.weight.dtype, capacity=T + n_new)
        x, _ = model.hidden_states(idx, cache, pos=pos, mask=mask[:, None])
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
        gen = torch.Generator(device=dev).manual_seed(int(kwargs.get("seed", 1234)))
        made: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        nxt_pos = pos[:, -1] + 1
        h = x[:, -1]
        for step in range(n_new):
            nxt = model._sample(
                model.logits(h), temperature, kwargs.get("top_k"), kwargs.get("top_p"), gen
            )
            for r, t in enumerate(nxt[:, 0].tolist()):
                if done[r]:
                    continue
                if t == self.eot_token_id:
                    done[r] = True
                    continue
                made[r].append(t)
                text = self.tok_decode(made[r])
                if any(s and s in text for s in until):
                    done[r] = True
            if all(done) or step == n_new - 1:
                break
            S = T + step + 1
            mask = (keys[None, None, :S] >= pad[:, None, None])[:, None]
            x, _ = model.hidden_states(nxt, cache, pos=nxt_pos[:, None], mask=mask)
            nxt_pos = nxt_pos + 1
            h = x[:, -1]
        return [self.tok_decode(m) for m in made]


def export_lm_folder(model: GPT, hf_tokenizer: Any, eot_id: int, pad_id: int, out: Path) -> Path:
    """``model`` and its tokenizer as a ``save_pretrained`` folder (:func:`gpt.hf.to_hf_lm`, the
    conversion every registered version gets): what lm-eval's ``HFLM`` loads, which ``GPTLM``
    is held to (tests) and benchmarked against (``bench/bench_benchmarks.py``)."""
    from gpt.hf import to_hf_lm

    out.mkdir(parents=True, exist_ok=True)
    to_hf_lm(model, eot_id, pad_id).save_pretrained(out)
    hf_tokenizer.model_max_length = model.config.block_size
    hf_tokenizer.save_pretrained(out)
    return out
