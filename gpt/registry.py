"""MLflow tracking and model registry: runs, batched metrics, registration, promotion gate.

Each trained model gets one MLflow run (params, per-step metrics, artifacts, lineage tags) and is
logged with the transformers flavor of its HF export, so users load it with
``mlflow.transformers.load_model("models:/<name>@champion")``. New versions take the alias
``challenger``; they take ``champion`` only by beating the current champion's primary metric on
the same evaluation set (same ``eval_hash``) by ``min_improvement`` with all metrics finite.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "gptops.champion_history"
LINEAGE_TAGS = ("data_version", "git_commit", "config_hash", "prefect_flow_run_id", "eval_hash",
                "parent_model_version", "profile")


def default_tracking_uri(workdir: Path) -> str:
    """SQLite under ``<workdir>/.gptops/mlflow.db`` (created on first use)."""
    path = Path(workdir).resolve() / ".gptops" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def resolve_tracking_uri(configured: str, workdir: Path) -> str:
    """``registry.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the project-local SQLite."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(workdir)


def _client(tracking_uri: str):  # -> mlflow.MlflowClient
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextmanager
def _fluent(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Temporarily point MLflow's fluent API at ``tracking_uri`` inside ``run_id``."""
    import mlflow

    prev = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        with mlflow.start_run(run_id=run_id):
            yield
    finally:
        mlflow.set_tracking_uri(prev)


def _create_experiment(client, tracking_uri: str, experiment: str) -> str:
    """Create the experiment; with SQLite, artifacts go beside the database, not into cwd."""
    location = None
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        location = (db.parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except Exception:  # noqa: BLE001 - created concurrently by another pipeline
        return client.get_experiment_by_name(experiment).experiment_id


def start_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, str],
              params: dict[str, Any]) -> str:
    """Create a run with lineage tags and flattened params; return its id."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else _create_experiment(client, tracking_uri, experiment)
    run = client.create_run(exp_id, run_name=run_name,
                            tags={k: str(v) for k, v in tags.items() if v is not None})
    from mlflow.entities import Param

    flat = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(flat), 100):
        client.log_batch(run.info.run_id, params=flat[i:i + 100])
    return run.info.run_id


class MetricsLogger:
    """A training callback that sends metrics to MLflow in batches (not one call per scalar)."""

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "",
                 flush_every: int = 200) -> None:
        self.client = _client(tracking_uri)
        self.run_id = run_id
        self.prefix = prefix
        self.flush_every = flush_every
        self._pending: list = []

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._pending.append(Metric(f"{self.prefix}{k}", float(v), now, step))
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._pending), 1000):
            self.client.log_batch(self.run_id, metrics=self._pending[i:i + 1000])
        self._pending = []


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    logger = MetricsLogger(tracking_uri, run_id)
    logger(step, metrics)
    logger.flush()


def log_artifacts(tracking_uri: str, run_id: str, paths: dict[str, Path]) -> None:
    """Log files/folders under the given artifact sub-paths."""
    client = _client(tracking_uri)
    for sub, path in paths.items():
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), sub)
        elif path.is_file():
            client.log_artifact(run_id, str(path), sub)


def log_dict(tracking_uri: str, run_id: str, obj: Any, artifact_file: str) -> None:
    _client(tracking_uri).log_dict(run_id, obj, artifact_file)


def log_text(tracking_uri: str, run_id: str, text: str, artifact_file: str) -> None:
    _client(tracking_uri).log_text(run_id, text, artifact_file)


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    champion: bool
    reason: str
    previous_champion: str | None


def _pip_requirements() -> list[str]:
    import safetensors
    import tokenizers
    import torch
    import transformers

    return [f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
            f"tokenizers=={tokenizers.__version__}", f"safetensors=={safetensors.__version__}"]


def _version_metric(mv, metric: str) -> float | None:
    raw = mv.tags.get(f"metric.{metric}")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def decide_promotion(new: float, champion: float | None, new_eval_hash: str,
                     champion_eval_hash: str | None, higher_is_better: bool,
                     min_improvement: float, metric: str) -> tuple[bool, str]:
    """The promotion gate as a pure function: (promote?, reason)."""
    if not math.isfinite(new):
        return False, f"{metric}={new} is not finite"
    if champion is None:
        return True, "first version: no champion yet"
    if champion_eval_hash != new_eval_hash:
        return False, (f"evaluation sets differ (champion {champion_eval_hash}, new "
                       f"{new_eval_hash}): not comparable; promote explicitly if intended")
    gain = (new - champion) if higher_is_better else (champion - new)
    if gain > min_improvement or (min_improvement == 0 and gain > 0):
        return True, f"{metric} {new:.4g} beats champion {champion:.4g} (gain {gain:.4g})"
    return False, (f"{metric} {new:.4g} does not beat champion {champion:.4g} by more than "
                   f"{min_improvement}")


def register_model(tracking_uri: str, run_id: str, name: str, hf_model, hf_tokenizer, task: str,
                   metrics: dict[str, float], tags: dict[str, str], primary_metric: str,
                   higher_is_better: bool, min_improvement: float,
                   description: str = "") -> Registration:
    """Log the HF model to ``run_id`` with the transformers flavor, register it, gate promotion.

    Raises:
        RegistryError: a non-finite metric (nothing is logged or registered).
    """
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        raise RegistryError(f"model '{name}': non-finite metrics {bad}; nothing registered")
    if primary_metric not in metrics:
        raise RegistryError(f"model '{name}': primary metric '{primary_metric}' missing")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow

    client = _client(tracking_uri)
    all_tags = {k: str(v) for k, v in tags.items() if v is not None}
    all_tags.update({f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()})
    all_tags["primary_metric"] = primary_metric
    # The registry resolves `models:/m-<id>` through the global tracking URI, so the whole
    # log-and-register sequence runs with it pointed at ours.
    with _fluent(tracking_uri, run_id):
        info = mlflow.transformers.log_model(
            transformers_model={"model": hf_model, "tokenizer": hf_tokenizer}, name="model",
            task=task, pip_requirements=_pip_requirements())
        try:
            client.create_registered_model(name, description=f"gptops model ({task})")
        except Exception:  # noqa: BLE001 - exists already (perhaps created concurrently)
            client.get_registered_model(name)
        mv = client.create_model_version(name, info.model_uri, run_id=run_id, tags=all_tags,
                                         description=description, model_id=info.model_id)
    mv = _await_ready(client, name, mv.version)
    return _promote_if_better(client, name, mv, metrics[primary_metric], tags.get("eval_hash", ""),
                              primary_metric, higher_is_better, min_improvement, run_id)


def _await_ready(client, name: str, version: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY" or time.time() > deadline:
            return mv
        time.sleep(0.2)


def _promote_if_better(client, name: str, mv, value: float, eval_hash: str, metric: str,
                       higher_is_better: bool, min_improvement: float,
                       run_id: str) -> Registration:
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - no champion alias yet
        champ = None
    champ_value = _version_metric(champ, metric) if champ else None
    champ_hash = champ.tags.get("eval_hash") if champ else None
    promote, reason = decide_promotion(value, champ_value, eval_hash, champ_hash,
                                       higher_is_better, min_improvement, metric)
    client.set_model_version_tag(name, mv.version, "promotion_decision", reason[:5000])
    if promote:
        set_champion(client, name, mv.version, reason)
    else:
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("%s v%s: %s (%s)", name, mv.version, "champion" if promote else "challenger", reason)
    return Registration(name=name, version=str(mv.version), run_id=run_id, champion=promote,
                        reason=reason, previous_champion=str(champ.version) if champ else None)


def set_champion(client, name: str, version: str, reason: str) -> None:
    """Move the champion alias and append the move to the registered model's history tag."""
    rm = client.get_registered_model(name)
    history = json.loads(rm.tags.get(HISTORY_TAG, "[]"))
    history.append({"version": str(version), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                 time.gmtime()),
                    "reason": reason[:200]})
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-20:]))


def load_champion_components(tracking_uri: str, name: str, alias: str = CHAMPION) -> dict:
    """``{"model": ..., "tokenizer": ...}`` of ``models:/<name>@<alias>`` via the MLflow flavor."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow

    client = _client(tracking_uri)
    try:
        client.get_model_version_by_alias(name, alias)
    except Exception as exc:  # noqa: BLE001
        raise RegistryError(f"no version of model '{name}' has alias '{alias}' at "
                            f"{tracking_uri}; run `gptops run` first or pick another alias"
                            ) from exc
    prev = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        return mlflow.transformers.load_model(f"models:/{name}@{alias}",
                                              return_type="components")
    finally:
        mlflow.set_tracking_uri(prev)


def list_versions(tracking_uri: str, name: str | None = None) -> list[dict[str, Any]]:
    """Registered versions with their aliases, lineage tags and metrics."""
    client = _client(tracking_uri)
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for n in names:
        rm = client.get_registered_model(n)
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name='{n}'"):
            rows.append({"name": n, "version": str(mv.version),
                         "aliases": sorted(aliases.get(str(mv.version), [])),
                         "run_id": mv.run_id, "tags": dict(mv.tags)})
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))
