"""What logging a pretraining checkpoint as an MLflow model costs, per checkpoint.

For each model shape (``tiny``: params.yaml's model, vocab 4096; ``gpt2-124m``: its profile,
GPT-2's vocabulary 50257), a randomly initialised model with its AdamW state (one optimizer step
on zero gradients, so the state has its full size; no training) is checkpointed with
``gpt.checkpoint.save_checkpoint``, then logged three ways into a fresh MLflow SQLite store:

- ``linked`` (what gptops does: :class:`gpt.registry.checkpoints.CheckpointModels`): a
  LoggedModel with the step's metrics, tags and the manifest as its only artifact;
- ``copy weights``: the same, with ``model.safetensors`` copied into the model's artifacts;
- ``copy all``: the whole checkpoint folder (weights, optimizer state, manifest) copied, as a
  per-checkpoint ``log_model`` of the training state would store it.

Each figure is the median of ``--repeats`` checkpoints; bytes are those added under the
store's artifact root (the database grows by a few KB per model in every case).

Usage: ``python bench/bench_checkpoint_models.py [--shapes tiny gpt2-124m] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = {"tiny": 4096, "gpt2-124m": 50257}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def measure(shape: str, repeats: int) -> dict[str, tuple[float, int]]:
    import torch
    from mlflow.entities import LoggedModelStatus, Metric

    from gpt import checkpoint as ckpt
    from gpt.config import load_params
    from gpt.registry import checkpoints, client
    from gpt.registry.tracking import experiment_id
    from gpt.train import build_model, make_optimizer

    params = load_params(ROOT / "params.yaml", shape)
    model = build_model(params.model, VOCAB[shape])
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # the AdamW state at its full size
    print(f"{shape}: {model.num_params() / 1e6:.1f}M parameters", flush=True)
    out: dict[str, list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        c = client(uri)
        exp = experiment_id(uri, "bench")
        art = root / "mlartifacts"
        for i in range(repeats):
            step = 100 * (i + 1)
            t0 = time.perf_counter()
            path = ckpt.save_checkpoint(
                root / "ckpts", step, model, {"optimizer": opt.state_dict()}, keep=1
            )
            out.setdefault("checkpoint itself (save_checkpoint)", []).append(
                (time.perf_counter() - t0, _size(path))
            )
            run_id = c.create_run(exp).info.run_id
            now = int(time.time() * 1000)
            metrics = [
                Metric("train/val_loss", 3.0 - i / 10, now, step),
                Metric("train/loss", 3.1 - i / 10, now, step),
            ]
            c.log_batch(run_id, metrics=metrics)
            for how in ("linked", "copy weights", "copy all"):
                before = _size(art) if art.exists() else 0
                t0 = time.perf_counter()
                if how == "linked":
                    checkpoints.CheckpointModels(
                        uri, run_id, "pretrain", f"k{i}{how}", ("tokens", "v")
                    ).log(step, path, metrics)
                else:
                    m = c.create_logged_model(exp, name=f"{how}-{step}", source_run_id=run_id)
                    c.log_batch(
                        run_id,
                        metrics=[
                            Metric(x.key, x.value, x.timestamp, x.step, model_id=m.model_id)
                            for x in metrics
                        ],
                    )
                    if how == "copy all":
                        c.log_model_artifacts(m.model_id, str(path))
                    else:
                        with tempfile.TemporaryDirectory(dir=root) as one:
                            (Path(one) / ckpt.WEIGHTS).hardlink_to(path / ckpt.WEIGHTS)
                            c.log_model_artifacts(m.model_id, one)
                    c.finalize_logged_model(m.model_id, LoggedModelStatus.READY)
                seconds = time.perf_counter() - t0
                out.setdefault(f"logged model, {how}", []).append((seconds, _size(art) - before))
            c.set_terminated(run_id)
    return {
        k: (statistics.median(s for s, _ in v), int(statistics.median(b for _, b in v)))
        for k, v in out.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["tiny", "gpt2-124m"], choices=list(VOCAB))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for shape in args.shapes:
        for what, (seconds, size) in measure(shape, args.repeats).items():
            rows.append((shape, what, seconds, size))
    print("| shape | per checkpoint | seconds | bytes |\n|---|---|---|---|")
    for shape, what, seconds, size in rows:
        print(f"| {shape} | {what} | {seconds:.3f} | {size:,} |")


if __name__ == "__main__":
    main()
