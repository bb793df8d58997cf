"""Training on 1 vs N processes through ``gpt.launch`` (torch's elastic launcher), side by side.

For each process count: the launcher's fixed cost (an empty function on N spawned ranks, which
includes importing torch in each), then the same pretraining run (same global batch, same steps;
tiny model on a small corpus built from ``pydoc_data.topics``) timed end to end, with the
training loop's own tokens/s. Prints each count next to one process, and the largest per-step
loss difference between the runs (their curves should agree up to reduction order).

Run: ``.venv/bin/python bench/bench_launch.py [--procs 1 2] [--steps 200]``. On a CPU machine
N processes share the cores (each gets cores/N threads), so the gain there is small or negative;
the launcher is for GPUs, one process each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _nothing() -> int:
    return 0


def _pretrain(tokens: str, out: str, steps: int, batch: int) -> dict:
    from gpt import train
    from gpt.config import LaunchConfig, ModelConfig, TrainConfig

    model = ModelConfig(block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0, bias=True,
                        init_from="", vocab_multiple=1)
    cfg = TrainConfig(max_steps=steps, batch_size=batch, grad_accum=1, lr=3e-3, min_lr_factor=0.1,
                      warmup_steps=10, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
                      eval_interval=10_000, eval_batches=2, checkpoints=1,
                      compile=False, seed=1337, max_nonfinite_steps=5,
                      log_interval=10, divergence_factor=0.0, divergence_steps=10,
                      bench_interval=0, bench_limit=1)
    launch = LaunchConfig(device="cpu", nproc_per_node=1, nnodes=1, node_rank=0,
                          rdzv_endpoint="", strategy="ddp")
    r = train.pretrain(model, cfg, launch, Path(tokens), Path(out), resume=False)
    return {"losses": [h["loss"] for h in r.loop.history], "tok_s": r.loop.tokens_per_sec,
            "loop_s": r.loop.seconds}


def _corpus(out: Path) -> Path:
    from pydoc_data.topics import topics

    from gpt.data.loader import write_token_shards
    from gpt.data.tokenizer import train_tokenizer

    names = sorted(topics)
    texts = [topics[n] for n in names]
    write_token_shards(texts, names, train_tokenizer(texts, 1024), out, val_fraction=0.1, seed=0)
    return out


def main() -> None:
    from gpt.launch import Job, World, run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokens = _corpus(Path(tmp) / "tokens")
        for n in args.procs:
            t0 = time.perf_counter()
            run(Job("bench", f"empty-{n}", World(n), "cpu", _nothing))
            fixed = time.perf_counter() - t0
            t0 = time.perf_counter()
            r = run(Job("bench", f"train-{n}", World(n), "cpu", _pretrain), tokens=str(tokens),
                    out=f"{tmp}/out-{n}", steps=args.steps, batch=args.batch)
            rows.append({"procs": n, "launch_s": fixed, "wall_s": time.perf_counter() - t0, **r})
    base = rows[0]
    print(f"\n{args.steps} steps, global batch {args.batch} x 64 tokens, 2 layers x 64 wide")
    print("| processes | launcher alone (s) | run wall (s) | loop tok/s | wall vs 1 | "
          "loop tok/s vs 1 | max loss diff vs 1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        diff = max(abs(a - b) for a, b in zip(r["losses"], base["losses"], strict=True))
        print(f"| {r['procs']} | {r['launch_s']:.1f} | {r['wall_s']:.1f} | {r['tok_s']:,.0f} | "
              f"{r['wall_s'] / base['wall_s']:.2f}x | {r['tok_s'] / base['tok_s']:.2f}x | "
              f"{diff:.1e} |")
    print(json.dumps([{k: v for k, v in r.items() if k != "losses"} for r in rows]))


if __name__ == "__main__":
    main()
