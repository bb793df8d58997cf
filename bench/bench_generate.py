"""Generation throughput: ours with KV cache vs ours without vs transformers' ``generate()``.

Same weights (HF built by ``gpt.hf.to_hf_lm``, SDPA attention), same prompts, greedy decoding
(``temperature=0`` / ``do_sample=False``) of exactly ``--new-tokens`` tokens (no early stop), for
each batch size. Each repeat runs the three side by side in rotating order; the table reports the
median new tokens/s (batch x new tokens / seconds) and the ratios. It also checks that our cached
and uncached greedy outputs agree, and how many of HF's tokens match ours.

``--init-from hf:<folder or hub id>`` benchmarks a GPT-2 checkpoint instead (ours loaded by
``gpt.hf.load_checkpoint``, HF by ``from_pretrained``); ``--init-from`` alone saves a random
GPT-2 with its 50257-token vocabulary (``--n-layer``/``--n-embd``/``--n-head``, ``--block-size``
positions) and uses that.

Run: ``.venv/bin/python bench/bench_generate.py`` (CPU defaults: 4 layers, 128 wide, 256 new
tokens, batch 1 and 8), or ``bench/bench_generate.py --init-from`` (GPT-2's architecture and
vocabulary).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gpt.hf import load_checkpoint, resolve, save_random_gpt2, to_hf_lm
from gpt.model import GPT, GPTConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def runners(ours: GPT, hf: torch.nn.Module, new_tokens: int,
            ) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> fn(prompts) returning the new tokens (B, new_tokens)."""
    def cached(x: torch.Tensor) -> torch.Tensor:
        return ours.generate(x, new_tokens, temperature=0)[:, x.size(1):]

    def uncached(x: torch.Tensor) -> torch.Tensor:
        return ours.generate(x, new_tokens, temperature=0, use_cache=False)[:, x.size(1):]

    def hf_generate(x: torch.Tensor) -> torch.Tensor:
        out = hf.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                          pad_token_id=1)
        return out[:, x.size(1):]

    return {"ours, KV cache": cached, "ours, no cache": uncached, "HF generate()": hf_generate}


def load_models(spec: str, block_size: int, n_layer: int, n_head: int, n_embd: int,
                ) -> tuple[GPT, torch.nn.Module, str]:
    """Ours and HF's ``from_pretrained`` (SDPA) of one GPT-2 checkpoint, and its spec; without
    a spec, of a random GPT-2 (50257-token vocabulary) saved in a temp folder."""
    from transformers import GPT2LMHeadModel

    if not spec:
        folder = tempfile.mkdtemp(prefix="bench-gpt2-")
        atexit.register(shutil.rmtree, folder, True)
        save_random_gpt2(Path(folder), n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                         n_positions=block_size, vocab_size=50257)
        spec = f"hf:{folder}"
    ours = load_checkpoint(spec, block_size=block_size)
    hf = GPT2LMHeadModel.from_pretrained(resolve(spec).path, attn_implementation="sdpa")
    return ours, hf, spec


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--block-size", type=int, default=512)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--init-from", nargs="?", const="", default=None, metavar="hf:DIR",
                    help="a GPT-2 checkpoint (hf:<folder or hub id>); alone: a random GPT-2 "
                         "with its 50257-token vocabulary")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prompt_len + args.new_tokens > args.block_size:
        ap.error("prompt-len + new-tokens must fit in block-size (no window sliding here)")
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.init_from is None:
        ours = GPT(GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size,
                             n_layer=args.n_layer, n_head=args.n_head,
                             n_embd=args.n_embd)).eval()
        hf = to_hf_lm(ours, eot_id=0, pad_id=1)
        hf.config._attn_implementation = "sdpa"
    else:
        ours, hf, spec = load_models(args.init_from, args.block_size, args.n_layer,
                                     args.n_head, args.n_embd)
        c = ours.config
        args.n_layer, args.n_embd, args.n_head, args.vocab_size = (c.n_layer, c.n_embd,
                                                                   c.n_head, c.vocab_size)
        print(f"checkpoint {spec}")
    ours, hf = ours.to(device), hf.to(device).eval()
    fns = runners(ours, hf, args.new_tokens)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}; "
          f"n_layer={args.n_layer} n_embd={args.n_embd} n_head={args.n_head} "
          f"vocab={args.vocab_size}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
          f"greedy, median of {args.repeats}")
    print(f"{'batch':>5} {'ours+cache':>11} {'ours no-cache':>14} {'HF generate':>12} "
          f"{'cache/no-cache':>15} {'ours/HF':>8} {'HF tokens = ours':>17}")
    for batch in args.batches:
        g = torch.Generator().manual_seed(batch)
        x = torch.randint(0, args.vocab_size, (batch, args.prompt_len), generator=g).to(device)
        outs = {name: fn(x) for name, fn in fns.items()}  # warmup, and outputs to compare
        assert torch.equal(outs["ours, KV cache"], outs["ours, no cache"]), "cache changed output"
        same = float((outs["HF generate()"] == outs["ours, KV cache"]).float().mean())
        rates: dict[str, list[float]] = {name: [] for name in fns}
        names = list(fns)
        for r in range(args.repeats):
            for name in names[r % 3:] + names[:r % 3]:
                _sync(device)
                t0 = time.perf_counter()
                fns[name](x)
                _sync(device)
                rates[name].append(batch * args.new_tokens / (time.perf_counter() - t0))
        med = {name: statistics.median(v) for name, v in rates.items()}
        c, n, h = (med[k] for k in names)
        print(f"{batch:>5} {c:>11,.0f} {n:>14,.0f} {h:>12,.0f} {c / n:>14.2f}x {c / h:>7.2f}x "
              f"{100 * same:>16.1f}%")


if __name__ == "__main__":
    main()
