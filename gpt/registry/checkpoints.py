"""Pretraining checkpoints as MLflow 3 logged models.

Each checkpoint a pretraining step writes (:mod:`gpt.checkpoint`) becomes a ``LoggedModel`` of
the step's run, named ``pretrain-<key>-step<N>``:

- its metrics are the step's at that optimizer step (``train/val_loss``, ``train/loss``...: the
  very points of the run's curves, linked to the model and to the run's dataset, the data
  version), so ``search_logged_models`` ordered by ``metrics.train/val_loss`` ranks them;
- its tags are the step (``gptops.step``, ``step_key``), the optimizer step
  (``checkpoint_step``), the folder (``checkpoint_path``) and the pipeline run's lineage;
- its artifacts are the checkpoint's ``manifest.json`` only (the sha256 of each file). The
  weights stay in the checkpoint folder: nothing is copied into MLflow's artifact store.

A checkpoint that rotation deleted (the newest three are kept), or that a resumed run wrote
again, has its logged model deleted, so the logged models of a step are its kept checkpoints.
``gptops register-checkpoint`` registers one of them (:func:`gpt.pipeline.steps.
register_checkpoint_step`) through the same evaluation, gate and tags as any candidate.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.registry.tags import CHECKPOINT_PATH, CHECKPOINT_STEP, STEP_KEY, STEP_TAG
from gpt.registry.tracking import client

log = logging.getLogger(__name__)

#: The ``model_type`` of a checkpoint's logged model (a column of the MLflow UI's models tab).
MODEL_TYPE = "gptops-checkpoint"
#: The metric a checkpoint is ranked by: the pretraining run's validation loss.
RANK_METRIC = "train/val_loss"


def model_name(step_name: str, step_key: str, step: int) -> str:
    """The logged model's name: ``pretrain-<key[:8]>-step<N>``."""
    return f"{step_name}-{step_key[:8]}-step{step}"


@dataclass
class CheckpointModels:
    """Logs each checkpoint of one training run as a logged model (called by the metrics
    logger, on rank 0). Plain data, so it crosses into a launched rank 0."""

    tracking_uri: str
    run_id: str
    step_name: str  #: the training step (``pretrain``)
    step_key: str  #: its key's digest
    dataset: tuple[str, str] | None = None  #: (name, digest) of the run's input dataset
    tags: dict[str, str] | None = None  #: lineage the pipeline run carries

    def log(self, step: int, path: Path, metrics: list[Any]) -> str:
        """Create the logged model of checkpoint ``path`` (written at ``step``) with the run's
        ``metrics`` of that step (``mlflow.entities.Metric``); returns its model id."""
        from mlflow.entities import LoggedModelStatus, Metric

        c = client(self.tracking_uri)
        experiment = c.get_run(self.run_id).info.experiment_id
        path = Path(path).resolve()
        self._forget(c, experiment, lambda m: step_of(m) == step)  # written again
        tags = {
            **(self.tags or {}),
            STEP_TAG: self.step_name,
            STEP_KEY: self.step_key,
            CHECKPOINT_STEP: str(step),
            CHECKPOINT_PATH: str(path),
        }
        model = c.create_logged_model(
            experiment,
            name=model_name(self.step_name, self.step_key, step),
            source_run_id=self.run_id,
            tags=tags,
            model_type=MODEL_TYPE,
        )
        name, digest = self.dataset or (None, None)
        linked = [
            Metric(
                m.key,
                m.value,
                m.timestamp,
                m.step,
                model_id=model.model_id,
                dataset_name=name,
                dataset_digest=digest,
            )
            for m in metrics
        ]
        if linked:  # the run already has these points: the store keeps them once
            c.log_batch(self.run_id, metrics=linked)
        with tempfile.TemporaryDirectory(prefix="gptops-ckpt-") as tmp:
            shutil.copy2(path / "manifest.json", tmp)
            c.log_model_artifacts(model.model_id, tmp)
        c.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        self._forget(c, experiment, lambda m: not Path(m.tags.get(CHECKPOINT_PATH, "")).is_dir())
        return model.model_id

    def _forget(self, c: Any, experiment: str, gone: Any) -> None:
        """Delete this step key's logged models that ``gone(model)`` says no longer match a
        kept checkpoint."""
        for m in _search(c, [experiment], self.step_key):
            if gone(m):
                c.delete_logged_model(m.model_id)


def step_of(model: Any) -> int:
    """The optimizer step of a checkpoint's logged model (-1: not one)."""
    return int(model.tags.get(CHECKPOINT_STEP, -1))


def _search(
    c: Any, experiments: list[str], step_key: str, order_by: list[dict[str, Any]] | None = None
) -> list[Any]:
    out: list[Any] = []
    token = None
    while True:
        page = c.search_logged_models(
            experiments,
            filter_string=(f"tags.`{STEP_KEY}` = '{step_key}' AND model_type = '{MODEL_TYPE}'"),
            order_by=order_by,
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def kept(tracking_uri: str, experiment: str, step_key: str) -> list[Any]:
    """The logged models of ``step_key``'s kept checkpoints, best (lowest validation loss)
    first; those without a validation loss last. Empty when the experiment does not exist."""
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return _search(
        c,
        [exp.experiment_id],
        step_key,
        order_by=[{"field_name": f"metrics.{RANK_METRIC}", "ascending": True}],
    )


def metric(model: Any, key: str = RANK_METRIC) -> float | None:
    """A logged model's metric ``key`` (its newest value), or None."""
    values = [m for m in model.metrics or [] if m.key == key]
    return max(values, key=lambda m: (m.step, m.timestamp)).value if values else None


def describe(model: Any) -> dict[str, Any]:
    """The fields of a checkpoint's logged model a user reads (``--json``)."""
    return {
        "model_id": model.model_id,
        "name": model.name,
        "step": step_of(model),
        "val_loss": metric(model),
        "run_id": model.source_run_id,
        "path": model.tags.get(CHECKPOINT_PATH, ""),
    }
