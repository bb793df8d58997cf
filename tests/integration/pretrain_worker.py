"""Run ``gpt.train.pretrain`` in its own process (plain ``python`` or under ``torchrun``).

Used by the kill/resume and DDP integration tests. Writes ``<report_dir>/rank<R>.json`` with the
rank's parameter hash, loss history and where it resumed from, and logs every checkpoint or final
weights file each rank writes, so a test can check that only rank 0 wrote.

Usage: python pretrain_worker.py TOKENS_DIR OUT_DIR REPORT_DIR [--max-steps N] [--step-delay S]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from gpt import checkpoint as ckpt
from gpt import train
from gpt.config import LaunchConfig, ModelConfig, TrainConfig


def build_shards(out_dir: Path, n_topics: int = 40, vocab_size: int = 512) -> Path:
    """Token shards from the built-in ``pydoc_data.topics`` corpus (no network, ~1 s)."""
    from pydoc_data.topics import topics

    from gpt.data.loader import write_token_shards
    from gpt.data.tokenizer import train_tokenizer

    names = sorted(topics)[:n_topics]
    texts = [topics[n] for n in names]
    tok = train_tokenizer(texts, vocab_size)
    write_token_shards(texts, names, tok, out_dir, val_fraction=0.2, seed=0)
    return out_dir


def param_hash(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokens_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("report_dir", type=Path)
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--checkpoint-interval", type=int, default=10)
    ap.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    ap.add_argument("--step-delay", type=float, default=0.0,
                    help="sleep after each step (gives a test time to kill mid-run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    args.report_dir.mkdir(parents=True, exist_ok=True)
    writes = args.report_dir / f"writes-rank{rank}.txt"

    # Record who writes checkpoints and final weights (the loop calls them via the module).
    real_save_checkpoint, real_save_weights = ckpt.save_checkpoint, ckpt.save_weights

    def save_checkpoint(directory, step, *a, **kw):
        with writes.open("a") as fh:
            fh.write(f"checkpoint {step}\n")
        return real_save_checkpoint(directory, step, *a, **kw)

    def save_weights(model, path, *a, **kw):
        with writes.open("a") as fh:
            fh.write(f"weights {path}\n")
        return real_save_weights(model, path, *a, **kw)

    ckpt.save_checkpoint, ckpt.save_weights = save_checkpoint, save_weights

    model_cfg = ModelConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                            bias=True, init_from="", vocab_multiple=1)
    if args.max_steps % args.checkpoint_interval:
        ap.error("--max-steps must be a multiple of --checkpoint-interval")
    train_cfg = TrainConfig(
        max_steps=args.max_steps, batch_size=8, grad_accum=1, lr=3e-3, min_lr_factor=0.1,
        warmup_steps=5, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
        eval_interval=1000, eval_batches=2,
        checkpoints=args.max_steps // args.checkpoint_interval, compile=False, seed=1337,
        max_nonfinite_steps=5, log_interval=10, divergence_factor=0.0, divergence_steps=10,
        bench_interval=0, bench_limit=1)
    launch_cfg = LaunchConfig(device="cpu", nproc_per_node=1, nnodes=1, node_rank=0,
                              rdzv_endpoint="", strategy=args.strategy)

    def callback(step: int, metrics: dict[str, float]) -> None:
        if args.step_delay:
            time.sleep(args.step_delay)

    result = train.pretrain(model_cfg, train_cfg, launch_cfg, args.tokens_dir, args.out_dir,
                            resume=True, callback=callback)
    sharded = args.strategy == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1
    report = {"rank": rank, "hash": None if sharded else param_hash(result.model),
              "resumed_from": result.loop.resumed_from,
              "losses": [h["loss"] for h in result.loop.history],
              "final_loss": result.loop.final_loss}
    (args.report_dir / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
