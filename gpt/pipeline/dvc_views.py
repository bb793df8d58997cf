"""What DVC sees of the models: each evaluation's metrics and the pretraining curve, written as
workspace files that ``dvc.yaml`` declares (top-level ``metrics:`` and ``plots:``).

So ``dvc metrics show`` lists model quality next to the cleaning statistics, ``dvc plots show``
draws the training curve and the document lengths, and ``dvc metrics diff`` between two git
commits (commit ``metrics/`` with ``dvc.lock``) shows how the models changed with the data.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from gpt.layout import Workspace

#: The pretraining curve: one row per logged step.
CURVE = "pretrain_loss.csv"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_metrics(workdir: Path, evaluation: dict[str, Any]) -> list[Path]:
    """``metrics/<kind>.json`` per evaluated model: its finite metrics (baselines included).

    ``evaluation`` maps a kind (base, task, sft) to its ``ModelEval`` (or its dict).
    """
    written = []
    for kind, e in sorted(evaluation.items()):
        metrics = e["metrics"] if isinstance(e, dict) else e.metrics
        finite = {k: float(v) for k, v in sorted(metrics.items())
                  if isinstance(v, int | float) and math.isfinite(float(v))}
        path = Workspace(Path(workdir)).metrics / f"{kind}.json"
        _atomic_write(path, json.dumps(finite, indent=2) + "\n")
        written.append(path)
    return written


def write_curve(workdir: Path, tracking_uri: str, run_id: str | None) -> Path | None:
    """``metrics/pretrain_loss.csv`` (step, loss, val_loss) from the pretrain run's MLflow
    history; None when there is no run to read (a reused step keeps its earlier file)."""
    if not run_id:
        return None
    from gpt.registry.tracking import client

    c = client(tracking_uri)
    try:
        loss = {m.step: m.value for m in c.get_metric_history(run_id, "train/loss")}
        val = {m.step: m.value for m in c.get_metric_history(run_id, "train/val_loss")}
    except Exception:  # noqa: BLE001 - a run from another store: nothing to draw
        return None
    if not loss:
        return None
    rows = ["step,loss,val_loss"] + [
        f"{step},{loss[step]:.6g},{val[step]:.6g}" if step in val else f"{step},{loss[step]:.6g},"
        for step in sorted(loss)]
    path = Workspace(Path(workdir)).metrics / CURVE
    _atomic_write(path, "\n".join(rows) + "\n")
    return path
