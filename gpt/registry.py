"""MLflow tracking and model registry: runs, batched metrics, registration, promotion gate.

Each trained model gets one MLflow run (params, per-step metrics, artifacts, lineage tags) and is
logged with the transformers flavor of its HF export, so users load it with
``mlflow.transformers.load_model("models:/<name>@champion")``. New versions take the alias
``challenger``; they take ``champion`` only by beating the current champion's primary metric on
the same evaluation set (same ``eval_hash``) by ``min_improvement`` with all metrics finite.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
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


_URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextmanager
def _global_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-global URIs at ``tracking_uri``, then restore them exactly.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into ``os.environ``; without
    the restore, a later call (or a child process) would silently use this store.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in _URI_ENV}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _fluent(tracking_uri: str, run_id: str) -> Iterator[None]:
    """Temporarily point MLflow's fluent API at ``tracking_uri`` inside ``run_id``."""
    import mlflow

    with _global_uri(tracking_uri), mlflow.start_run(run_id=run_id):
        yield


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


def log_table(tracking_uri: str, run_id: str, rows: list[dict[str, Any]],
              artifact_file: str) -> None:
    """Rows as an MLflow table artifact (rendered as a table in the run's artifact view)."""
    import pandas as pd

    _client(tracking_uri).log_table(run_id, data=pd.DataFrame(rows), artifact_file=artifact_file)


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

    return [f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}", f"tokenizers=={tokenizers.__version__}",
            f"safetensors=={safetensors.__version__}"]


def _metric_tag(value: float) -> str:
    return f"{value:.6g}"


def _version_metric(mv, metric: str) -> float | None:
    raw = mv.tags.get(f"metric.{metric}")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def decide_promotion(new: float, champion: float | None, new_eval_hash: str,
                     champion_eval_hash: str | None, higher_is_better: bool,
                     min_improvement: float, metric: str,
                     baseline: float | None = None) -> tuple[bool, str]:
    """The promotion gate as a pure function: (promote?, reason).

    ``baseline`` is the trivial model's value of the metric (majority class; uniform over the
    vocabulary for perplexity): a version that does not beat it never becomes champion.
    """
    if not math.isfinite(new):
        return False, f"{metric}={new} is not finite"
    if baseline is not None and not (new > baseline if higher_is_better else new < baseline):
        return False, (f"{metric} {new:.4g} does not beat the trivial baseline {baseline:.4g}; "
                       "train longer or check the data")
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
                   description: str = "", baseline: float | None = None,
                   license_id: str = "other") -> Registration:
    """Log the HF model to ``run_id`` with the transformers flavor, register it, gate promotion.

    Raises:
        RegistryError: a non-finite metric (nothing is logged or registered).
    """
    bad = {k: v for k, v in metrics.items()
           if not isinstance(v, (int, float)) or not math.isfinite(v)}
    if bad:
        raise RegistryError(f"model '{name}': non-finite metrics {bad}; nothing registered")
    if primary_metric not in metrics:
        raise RegistryError(f"model '{name}': primary metric '{primary_metric}' missing")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow

    client = _client(tracking_uri)
    all_tags = {k: str(v) for k, v in tags.items() if v is not None}
    all_tags.update({f"metric.{k}": _metric_tag(v) for k, v in metrics.items()})
    all_tags["primary_metric"] = primary_metric
    # The registry resolves `models:/m-<id>` through the global tracking URI, so the whole
    # log-and-register sequence runs with it pointed at ours.
    with _fluent(tracking_uri, run_id):
        info = mlflow.transformers.log_model(
            transformers_model={"model": hf_model, "tokenizer": hf_tokenizer}, name="model",
            task=task, pip_requirements=_pip_requirements(),
            model_card=_model_card(description, license_id, task))
        # One writer at a time per model: version numbers and the read-champion-then-move-alias
        # gate are not atomic in MLflow, so concurrent pipelines would race without the lock.
        with registry_lock(tracking_uri, name):
            try:
                client.create_registered_model(name, description=f"gptops model ({task})")
            except Exception:  # noqa: BLE001 - exists already (perhaps created concurrently)
                client.get_registered_model(name)
            mv = client.create_model_version(name, info.model_uri, run_id=run_id, tags=all_tags,
                                             description=description, model_id=info.model_id)
            mv = _await_ready(client, name, mv.version)
            # Gate on the value as stored in the tag, the precision the champion is read back
            # at: otherwise re-registering identical metrics "beats" the champion by rounding.
            return _promote_if_better(client, name, mv,
                                      float(_metric_tag(metrics[primary_metric])),
                                      tags.get("eval_hash", ""), primary_metric,
                                      higher_is_better, min_improvement, run_id,
                                      baseline)


def _model_card(text: str, license_id: str, task: str):  # -> huggingface_hub.ModelCard
    """The card MLflow stores with the model (without one it asks the hub, offline or not)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(license=license_id, pipeline_tag=task, library_name="transformers",
                         tags=["gptops"])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _await_ready(client, name: str, version: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while True:
        mv = client.get_model_version(name, version)
        if mv.status == "READY" or time.time() > deadline:
            return mv
        time.sleep(0.2)


def _promote_if_better(client, name: str, mv, value: float, eval_hash: str, metric: str,
                       higher_is_better: bool, min_improvement: float,
                       run_id: str, baseline: float | None = None) -> Registration:
    """Gate ``mv`` against the current champion. Callers hold :func:`registry_lock`, so the
    champion read here is still the champion when the alias moves."""
    champ = _champion(client, name)
    champ_value = _version_metric(champ, metric) if champ else None
    champ_hash = champ.tags.get("eval_hash") if champ else None
    promote, reason = decide_promotion(value, champ_value, eval_hash, champ_hash,
                                       higher_is_better, min_improvement, metric, baseline)
    client.set_model_version_tag(name, mv.version, "promotion_decision", reason[:5000])
    if promote:
        set_champion(client, name, mv.version, reason, action="gate")
    else:
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
    log.info("%s v%s: %s (%s)", name, mv.version, "champion" if promote else "challenger", reason)
    return Registration(name=name, version=str(mv.version), run_id=run_id, champion=promote,
                        reason=reason, previous_champion=str(champ.version) if champ else None)


def _champion(client, name: str):  # -> ModelVersion | None
    """The version holding the champion alias, or None (no such model or no champion yet)."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - MLflow raises RestException/MlflowException
        return None


def _current_champion(client, name: str) -> str | None:
    champ = _champion(client, name)
    return str(champ.version) if champ else None


def set_champion(client, name: str, version: str, reason: str, action: str = "gate") -> None:
    """Move the champion alias and append the move to the registered model's history tag.

    ``action`` is ``gate`` (the promotion gate), ``promote`` (explicit) or ``rollback``.
    """
    rm = client.get_registered_model(name)
    history = _parse_history(rm.tags.get(HISTORY_TAG))
    history.append({"version": str(version), "action": action,
                    "previous": _current_champion(client, name),
                    "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "reason": reason[:200]})
    client.set_registered_model_alias(name, CHAMPION, str(version))
    # MLflow caps tag values (5000 chars on SQL stores): keep the newest entries that fit.
    keep = history[-50:]
    while len(keep) > 1 and len(json.dumps(keep)) > 4900:
        keep = keep[1:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(keep))


def _parse_history(raw: str | None) -> list[dict[str, Any]]:
    try:
        history = json.loads(raw or "[]")
    except ValueError:
        log.warning("unreadable %s tag; starting a new history", HISTORY_TAG)
        return []
    return [h for h in history if isinstance(h, dict) and "version" in h]


# --- governance: explicit promotion, rollback, history -------------------------------------


@contextmanager
def registry_lock(tracking_uri: str, name: str, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialise champion changes of one registered model across processes.

    PostgreSQL: a session advisory lock on a connection derived from the tracking URI. SQLite: an
    exclusive ``flock`` on a file beside the database. Other backends (an MLflow server): no lock
    (the server would have to provide it); concurrent gates there may race.
    """
    if tracking_uri.startswith(("postgresql", "postgres:")):
        import psycopg

        conninfo = re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql://", tracking_uri)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{int(timeout_s * 1000)}ms'")
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"gptops:{name}",))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"gptops:{name}",))
    elif tracking_uri.startswith("sqlite:///"):
        import fcntl

        db = Path(tracking_uri.removeprefix("sqlite:///"))
        lock_path = db.parent / f".{db.name}.registry.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as fh:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RegistryError(f"registry lock {lock_path} held for over "
                                            f"{timeout_s:.0f}s; is another gptops stuck?"
                                            ) from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield


def _require_model(client, tracking_uri: str, name: str):
    try:
        return client.get_registered_model(name)
    except Exception as exc:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST
        known = sorted(m.name for m in client.search_registered_models()) or ["(none)"]
        raise RegistryError(f"no registered model '{name}' at {tracking_uri}; registered models: "
                            f"{', '.join(known)}") from exc


def _version_numbers(client, name: str) -> list[str]:
    return sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")),
                  key=int)


def champion_history(tracking_uri: str, name: str) -> list[dict[str, Any]]:
    """The champion moves of ``name``, oldest first: version, action, previous, at, reason.

    Raises:
        RegistryError: ``name`` is not a registered model.
    """
    client = _client(tracking_uri)
    rm = _require_model(client, tracking_uri, name)
    return _parse_history(rm.tags.get(HISTORY_TAG))


def promote(tracking_uri: str, name: str, version: str, reason: str) -> dict[str, Any]:
    """Make ``version`` the champion of ``name`` by hand, recording ``reason`` in the history.

    Raises:
        RegistryError: unknown model or version, or an empty reason.
    """
    if not reason.strip():
        raise RegistryError("promote needs --reason: say why this version becomes champion")
    client = _client(tracking_uri)
    _require_model(client, tracking_uri, name)
    version = str(version).strip().removeprefix("v")
    with registry_lock(tracking_uri, name):
        versions = _version_numbers(client, name)
        if version not in versions:
            raise RegistryError(f"model '{name}' has no version '{version}'; versions: "
                                f"{', '.join(versions) or '(none)'}")
        previous = _current_champion(client, name)
        if previous == version:
            raise RegistryError(f"model '{name}' version {version} is already the champion")
        return _move_champion(client, name, version, previous, reason, "promote",
                              f"promoted by hand: {reason.strip()}")


def _rollback_target(history: list[dict[str, Any]], current: str | None,
                     existing: set[str]) -> str | None:
    """The champion before ``current``: replay the history as a stack (a rollback pops it)."""
    stack: list[str] = []
    for h in history:
        if h.get("action") == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != str(h["version"]):
                stack.append(str(h["version"]))
        else:
            stack.append(str(h["version"]))
    while stack and stack[-1] == current:
        stack.pop()
    while stack and stack[-1] not in existing:  # deleted versions cannot come back
        stack.pop()
    return stack[-1] if stack else None


def rollback(tracking_uri: str, name: str, reason: str) -> dict[str, Any]:
    """Move the champion of ``name`` back to the previous champion in its history.

    Successive rollbacks walk further back (each undoes one promotion), never re-promoting
    the version just rolled back from.

    Raises:
        RegistryError: unknown model, no champion, no earlier champion, or an empty reason.
    """
    if not reason.strip():
        raise RegistryError("rollback needs --reason: say why the champion is rolled back")
    client = _client(tracking_uri)
    _require_model(client, tracking_uri, name)
    with registry_lock(tracking_uri, name):
        rm = client.get_registered_model(name)
        history = _parse_history(rm.tags.get(HISTORY_TAG))
        current = _current_champion(client, name)
        if current is None:
            raise RegistryError(f"model '{name}' has no champion to roll back; versions: "
                                f"{', '.join(_version_numbers(client, name)) or '(none)'}")
        target = _rollback_target(history, current, set(_version_numbers(client, name)))
        if target is None:
            raise RegistryError(f"model '{name}': no earlier champion than v{current} in the "
                                f"history; use `gptops promote {name} VERSION` instead")
        return _move_champion(client, name, target, current, reason, "rollback",
                              f"rolled back to (from v{current}): {reason.strip()}")


def _move_champion(client, name: str, version: str, previous: str | None, reason: str,
                   action: str, decision: str) -> dict[str, Any]:
    """Move the alias by hand (caller holds the lock), tag why, and describe the move."""
    set_champion(client, name, version, reason.strip(), action=action)
    client.set_model_version_tag(name, version, "promotion_decision", decision[:5000])
    with contextlib.suppress(Exception):  # a champion is no longer a challenger
        if str(client.get_model_version_by_alias(name, CHALLENGER).version) == str(version):
            client.delete_registered_model_alias(name, CHALLENGER)
    log.info("%s: champion v%s -> v%s (%s: %s)", name, previous, version, action, reason)
    return {"name": name, "version": version, "previous": previous, "action": action,
            "reason": reason.strip()}


def champion_metrics(tracking_uri: str, name: str) -> dict[str, Any] | None:
    """The current champion's version, eval_hash and ``metric.*`` tags (None: no champion)."""
    mv = _champion(_client(tracking_uri), name)
    if mv is None:
        return None
    metrics = {}
    for k in mv.tags:
        if k.startswith("metric."):
            value = _version_metric(mv, k.removeprefix("metric."))
            if value is not None:
                metrics[k.removeprefix("metric.")] = value
    return {"version": str(mv.version), "eval_hash": mv.tags.get("eval_hash"),
            "metrics": metrics}


def resolve_alias(tracking_uri: str, name: str, alias: str = CHAMPION, client=None):
    """The model version behind ``<name>@<alias>``.

    Raises:
        RegistryError: unknown model (listing the registered ones) or unknown alias (listing
            the model's aliases).
    """
    client = client or _client(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as exc:  # noqa: BLE001
        try:
            rm = client.get_registered_model(name)
        except Exception:  # noqa: BLE001 - the model itself is unknown
            known = sorted(m.name for m in client.search_registered_models()) or ["(none)"]
            raise RegistryError(f"no registered model '{name}' at {tracking_uri}; registered "
                                f"models: {', '.join(known)}; run `gptops run` first"
                                ) from exc
        aliases = ", ".join(f"{a}=v{v}" for a, v in sorted((rm.aliases or {}).items()))
        raise RegistryError(f"model '{name}' has no alias '{alias}' at {tracking_uri}; its "
                            f"aliases: {aliases or '(none)'}") from exc


@dataclass(frozen=True)
class ModelRef:
    """One registered version: ``models:/<name>@<alias>`` or, with ``version``, ``/<version>``."""

    uri: str
    name: str
    alias: str = CHAMPION
    version: str = ""

    @property
    def model_uri(self) -> str:
        v = self.version.strip().removeprefix("v")
        return f"models:/{self.name}/{v}" if v else f"models:/{self.name}@{self.alias}"

    def describe(self) -> str:
        return self.model_uri.removeprefix("models:/")


def _check_ref(ref: ModelRef, client) -> None:
    """Unknown model, alias or version: one line listing what exists."""
    if not ref.version:
        resolve_alias(ref.uri, ref.name, ref.alias, client)
        return
    _require_model(client, ref.uri, ref.name)
    versions = _version_numbers(client, ref.name)
    if ref.version.strip().removeprefix("v") not in versions:
        raise RegistryError(f"model '{ref.name}' has no version '{ref.version}'; versions: "
                            f"{', '.join(versions) or '(none)'}")


def model_task(ref: ModelRef) -> str:
    """The transformers task a version was registered for (``text-generation``, ...)."""
    import mlflow

    client = _client(ref.uri)
    _check_ref(ref, client)
    with _global_uri(ref.uri):
        info = mlflow.models.get_model_info(ref.model_uri)
    return str(info.flavors.get("transformers", {}).get("task", ""))


def load_components(ref: ModelRef, expect_task: str | None = None) -> dict:
    """``{"model": ..., "tokenizer": ...}`` of a registered version via the MLflow flavor.

    Raises:
        RegistryError: unknown model/alias/version, or a model for another task than
            ``expect_task`` (a classifier cannot generate text).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow

    task = model_task(ref)
    if expect_task and task != expect_task:
        raise RegistryError(f"{ref.describe()} is a {task or 'non-transformers'} model, not "
                            f"{expect_task}; pick another with --model (e.g. "
                            f"`gptops models` lists them)")
    with _global_uri(ref.uri):
        return mlflow.transformers.load_model(ref.model_uri, return_type="components")


def load_champion_components(tracking_uri: str, name: str, alias: str = CHAMPION) -> dict:
    """``{"model": ..., "tokenizer": ...}`` of ``models:/<name>@<alias>``."""
    return load_components(ModelRef(tracking_uri, name, alias))


def classify(components: dict, texts: list[str]) -> list[dict[str, Any]]:
    """Label and probability per text; inputs longer than the context are truncated."""
    import torch

    model, tok = components["model"], components["tokenizer"]
    limit = getattr(model.config, "n_positions", None) or tok.model_max_length
    out = []
    model.eval()
    with torch.no_grad():
        for text in texts:
            enc = tok(text, truncation=True, max_length=limit, return_tensors="pt")
            probs = model(**enc).logits.softmax(-1)[0]
            i = int(probs.argmax())
            out.append({"text": text, "label": model.config.id2label[i],
                        "score": float(probs[i])})
    return out


def export_hf(ref: ModelRef, out_dir: Path) -> str:
    """Write a registered version as a Hugging Face folder; return its transformers task.

    Raises:
        RegistryError: ``out_dir`` exists and is not empty (nothing is overwritten).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise RegistryError(f"export folder {out_dir} is not empty; pass a new folder")
    comps = load_components(ref)
    task = model_task(ref)
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    comps["model"].save_pretrained(tmp)
    comps["tokenizer"].save_pretrained(tmp)
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(tmp, out_dir)
    return task


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
