"""Training throughput: our ``gpt.model.GPT`` vs transformers' ``GPT2LMHeadModel``.

Both models get the same config (HF built with ``gpt.hf.hf_config``, ``attn_implementation=
"sdpa"``) and the same weights, batch, context, dtype and optimizer (AdamW, same settings). Each
repeat times ``--steps`` full optimizer steps (forward, backward, step) of ours and of HF,
alternating step by step, after warmup; the table reports the median tokens/s and the ratio.
On CUDA it also prints the model FLOPs utilisation (nanoGPT's estimate: 6N + 12*L*H*Q*T FLOPs
per token).

The defaults are the project's demo training run: model, vocabulary and batch size of
``params.yaml``'s ``tiny`` profile (``--profile`` picks another).

``--init-from hf:<folder or hub id>`` benchmarks a GPT-2 checkpoint instead: ours loaded by
``gpt.hf.load_checkpoint`` (what ``model.init_from`` trains), HF by ``from_pretrained``, dropout
off in both, logits checked equal first. ``--init-from`` alone saves a random GPT-2 (its 50257
vocabulary, ``--n-layer``/``--n-embd``/``--n-head``, ``--block-size`` positions) and uses that;
``--vocab-multiple 64`` pads our vocabulary as ``model.vocab_multiple`` does.

Run: ``.venv/bin/python bench/bench_train.py`` (CPU defaults), ``bench/bench_train.py --init-from
--n-layer 2 --batch 8`` (GPT-2's architecture and vocabulary), or on a GPU:
``bench/bench_train.py --device cuda --dtype bf16 --compile --n-layer 12 --n-embd 768
--n-head 12 --block-size 1024 --batch 16 --vocab-size 50304``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from gpt.config import load_params
from gpt.hf import load_checkpoint, resolve, save_random_gpt2, to_hf_lm
from gpt.loss import before_compile
from gpt.model import GPT, GPTConfig
from gpt.train import FUSED_ADAMW_DEVICES


def build_models(cfg: GPTConfig, device: torch.device) -> tuple[GPT, nn.Module]:
    """Ours and an HF ``GPT2LMHeadModel`` (SDPA attention) with the same weights."""
    torch.manual_seed(0)
    ours = GPT(cfg)
    hf = to_hf_lm(ours, eot_id=0, pad_id=1)
    hf.config._attn_implementation = "sdpa"
    assert hf.config._attn_implementation == "sdpa"
    return ours.to(device), hf.to(device)


GPT2_VOCAB = 50257


def random_gpt2(n_layer: int, n_head: int, n_embd: int, n_positions: int) -> str:
    """A random GPT-2 (GPT-2's init and 50257-token vocabulary) saved in a temp folder."""
    folder = tempfile.mkdtemp(prefix="bench-gpt2-")
    atexit.register(shutil.rmtree, folder, True)
    save_random_gpt2(Path(folder), n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     n_positions=n_positions, vocab_size=GPT2_VOCAB)
    return f"hf:{folder}"


def load_models(spec: str, block_size: int, vocab_multiple: int, device: torch.device,
                ) -> tuple[GPT, nn.Module, float]:
    """Ours (``gpt.hf.load_checkpoint``) and HF's ``from_pretrained`` (SDPA) of one GPT-2
    checkpoint, dropout off in both, and the largest logit difference between them."""
    from transformers import GPT2LMHeadModel

    ours = load_checkpoint(spec, block_size=block_size, vocab_multiple=vocab_multiple)
    hf = GPT2LMHeadModel.from_pretrained(resolve(spec).path, attn_implementation="sdpa",
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    x = torch.randint(0, ours.config.vocab_size, (1, block_size),
                      generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((ours.logits(ours.hidden_states(x)[0]) - hf.eval()(x).logits).abs().max())
    return ours.to(device), hf.to(device), diff


def flops_per_token(model: GPT) -> float:
    """nanoGPT's estimate of training FLOPs per token: 6N + 12*L*H*Q*T."""
    c = model.config
    n = model.num_params()
    return 6 * n + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, is_hf: bool, device: torch.device, dtype: str,
              compile_model: bool) -> Callable[[torch.Tensor], float]:
    """One optimizer step (zero_grad, forward, backward, AdamW step) on a batch."""
    model.train()
    # Fused AdamW for both: what gpt.train uses and what transformers' Trainer defaults to
    # (optim="adamw_torch_fused" with torch >= 2.8).
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device.type in FUSED_ADAMW_DEVICES)
    if compile_model:
        before_compile()
    net = torch.compile(model) if compile_model else model
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
                else contextlib.nullcontext())

    def step(x: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = (net(input_ids=x, labels=x).loss if is_hf
                        else net(x, x, return_logits=False)[1])
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def profile_defaults(profile: str) -> dict[str, int]:
    """Model shape, vocabulary and batch size of a ``params.yaml`` profile."""
    p = load_params(PARAMS, profile)
    return dict(n_layer=p.model.n_layer, n_embd=p.model.n_embd, n_head=p.model.n_head,
                block_size=p.model.block_size, vocab_size=p.tokenizer.vocab_size,
                batch=p.train.batch_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="tiny",
                    help="params.yaml profile giving the defaults of the options below")
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--block-size", type=int)
    ap.add_argument("--vocab-size", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per timed repeat")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="accelerator peak for MFU (H100 SXM bf16 dense: 989)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--init-from", nargs="?", const="", default=None, metavar="hf:DIR",
                    help="a GPT-2 checkpoint (hf:<folder or hub id>); alone: a random GPT-2 "
                         "with its 50257-token vocabulary")
    ap.add_argument("--vocab-multiple", type=int, default=1,
                    help="pad our vocabulary to a multiple of this (model.vocab_multiple)")
    args = ap.parse_args()
    for key, value in profile_defaults(args.profile).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.init_from is None:
        cfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.block_size,
                        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                        vocab_multiple=args.vocab_multiple)
        ours, hf = build_models(cfg, device)
    else:
        spec = args.init_from or random_gpt2(args.n_layer, args.n_head, args.n_embd,
                                             args.block_size)
        ours, hf, diff = load_models(spec, args.block_size, args.vocab_multiple, device)
        c = ours.config
        args.n_layer, args.n_embd, args.n_head = c.n_layer, c.n_embd, c.n_head
        args.vocab_size = c.vocab_size
        print(f"checkpoint {spec}: max |logits ours - HF| = {diff:.2e} (fp32, at load)")
    steps = {"ours (gpt.model.GPT)": make_step(ours, False, device, args.dtype, args.compile),
             "HF GPT2LMHeadModel": make_step(hf, True, device, args.dtype, args.compile)}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab_size, (args.batch, args.block_size), generator=g).to(device)
    tokens = args.batch * args.block_size * args.steps
    for fn in steps.values():
        for _ in range(args.warmup):
            fn(x)
    # Steps alternate (ours, HF, ours, ...) so that bursts of load on a shared machine hit both
    # alike; a repeat's rate is its tokens over the summed step times of that model.
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.repeats):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        seconds = dict.fromkeys(steps, 0.0)
        for _ in range(args.steps):
            for name in order:
                _sync(device)
                t0 = time.perf_counter()
                steps[name](x)
                _sync(device)
                seconds[name] += time.perf_counter() - t0
        for name in steps:
            rates[name].append(tokens / seconds[name])
    med = {name: statistics.median(v) for name, v in rates.items()}
    ours_name, hf_name = list(steps)
    print(f"torch {torch.__version__}, device {device}, dtype {args.dtype}, "
          f"compile {args.compile}, threads {torch.get_num_threads()}")
    print(f"config: n_layer={args.n_layer} n_embd={args.n_embd} n_head={args.n_head} "
          f"block_size={args.block_size} vocab={args.vocab_size} (embedding rows "
          f"{ours.config.padded_vocab_size}) batch={args.batch}, "
          f"{ours.num_params() / 1e6:.2f}M params; {args.repeats} repeats x {args.steps} steps")
    print(f"{'model':<22} {'median tok/s':>13} {'min':>10} {'max':>10}")
    for name, v in rates.items():
        print(f"{name:<22} {med[name]:>13,.0f} {min(v):>10,.0f} {max(v):>10,.0f}")
    ratios = sorted(a / b for a, b in zip(rates[ours_name], rates[hf_name], strict=True))
    # Each repeat times both back to back, so the per-repeat ratio cancels most machine noise.
    print(f"ratio ours/HF: {statistics.median(ratios):.2f}x median of per-repeat ratios "
          f"({', '.join(f'{q:.2f}' for q in ratios)}); ratio of medians "
          f"{med[ours_name] / med[hf_name]:.2f}x")
    if device.type == "cuda":
        fpt = flops_per_token(ours)
        for name in steps:
            mfu = fpt * med[name] / (args.peak_tflops * 1e12)
            print(f"MFU {name}: {100 * mfu:.1f}% of {args.peak_tflops:g} TFLOP/s")


if __name__ == "__main__":
    main()
