"""Registering one trained model: a :class:`Candidate` in, a gated model version out.

Each model kind (base LM, classifier, SFT LM) builds one ``Candidate``; :func:`register` treats
them all alike: reuse a version with the same keys, else log metrics and artifacts to the run
that trained the model, log the model with MLflow's transformers flavor, create the version and
pass it through the gate (:mod:`gpt.registry.gate`) under the model's lock.

Every version is logged ready to serve (:mod:`gpt.registry.serving`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt.errors import RegistryError
from gpt.registry import gate
from gpt.registry.governance import CHALLENGER, CHAMPION, model_description, registry_lock
from gpt.registry.serving import PLAIN_TEXT, PLAIN_TEXT_FLAVOR, TASKS, servable, serving
from gpt.registry.tags import (
    DECISION,
    EVAL_KEY,
    KIND_TAG,
    MODEL_KEY,
    TASK_TAG,
    VersionTags,
)
from gpt.registry.tracking import (
    Tracking,
    child_run,
    client,
    global_uri,
    log_artifacts,
    log_dict,
    log_metrics,
    log_table,
    reopened,
)

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One trained, evaluated model, ready for the registry."""

    kind: str  #: a :mod:`gpt.kinds` name: "base", "task" or "sft"
    name: str  #: the registered model's name
    task: str  #: the transformers task ("text-generation", "text-classification")
    metrics: dict[str, float]  #: headline metrics: stored as tags, the gate reads one
    eval_hash: str  #: the evaluation set: versions compare only on equal hashes
    spec: gate.GateSpec
    keys: dict[str, str]  #: ``model_key`` (the weights) and ``eval_key`` (the evaluation)
    tags: dict[str, str]  #: lineage (data version, git commit, flow run, parent version, ...)
    export: Callable[[], tuple[Any, Any]]  #: -> (HF model, HF tokenizer), built when needed
    card: str  #: model card markdown (the gate appends the champion comparison)
    run_id: str | None = None  #: the MLflow run that trained it, if it is in this store
    license: str = "other"
    artifacts: dict[str, Path] = field(default_factory=dict)  #: artifact dir -> file/folder
    documents: dict[str, Any] = field(default_factory=dict)  #: artifact file -> JSON value
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    champion: bool
    reason: str
    previous_champion: str | None
    reused: bool = False
    rejected: bool = False  #: worse than its trivial baseline: no alias, tagged ``rejected``
    #: the stored metrics of the champion the gate compared it with (empty: no champion, or one
    #: evaluated on another set); a reused version: of the champion now
    champion_metrics: dict[str, float] = field(default_factory=dict)
    metric: str = ""  #: the gate's primary metric
    value: float | None = None  #: its value for this version


def _pip_requirements() -> list[str]:
    import safetensors
    import tokenizers
    import torch
    import transformers

    return [f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}", f"tokenizers=={tokenizers.__version__}",
            f"safetensors=={safetensors.__version__}"]


def existing_version(tracking_uri: str, c: Candidate):  # -> ModelVersion | None
    """A version of ``c.name`` holding the same trained weights (equal model key) that went
    through the gate. A changed evaluation alone registers nothing new: the weights are the same.
    """
    gated, _ = _versions_with_key(tracking_uri, c)
    return gated


def _versions_with_key(tracking_uri: str, c: Candidate):  # -> (gated, ungated) versions
    """The newest gated version holding ``c``'s weights, and the newest never gated (a crash
    between creating it and gating it)."""
    cl = client(tracking_uri)
    query = f"name='{c.name}' and tags.{MODEL_KEY}='{c.keys[MODEL_KEY]}'"
    try:
        versions = cl.search_model_versions(query)
    except Exception:  # noqa: BLE001 - the model is not registered yet
        return None, None

    def newest(vs):
        return max(vs, key=lambda v: int(v.version)) if vs else None

    return (newest([v for v in versions if v.tags.get(DECISION)]),
            newest([v for v in versions if not v.tags.get(DECISION)]))


def _run_exists(tracking_uri: str, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        return client(tracking_uri).get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 - a run of another store (the tracking URI changed)
        return False


def register(c: Candidate, tracking: Tracking) -> Registration:
    """Register ``c`` (or reuse its existing version) and gate it.

    Raises:
        RegistryError: a non-finite or missing primary metric, or a task that cannot be
            served (nothing is logged or registered).
    """
    gate.require_finite(c.metrics, f"model '{c.name}'")
    for metric in (c.spec.metric, *(b.metric for b in c.spec.also)):
        if metric not in c.metrics:
            raise RegistryError(f"model '{c.name}': gate metric '{metric}' missing (it has "
                                f"{', '.join(sorted(c.metrics))}); fix registry.gate")
    if c.task not in TASKS:
        raise RegistryError(f"model '{c.name}': task '{c.task}' cannot be served; use "
                            f"{' or '.join(TASKS)}")
    found = existing_version(tracking.uri, c)
    if found is not None:  # gated already: final, no lock needed
        return _reused(c, tracking.uri, found)
    with global_uri(tracking.uri), registry_lock(tracking.uri, c.name):
        done = _settle(c, tracking.uri)
        if done is not None:
            return done
    if _run_exists(tracking.uri, c.run_id):
        return _register(c, tracking.uri, c.run_id)  # type: ignore[arg-type]
    # Trained earlier against another store: a run of its own under this pipeline run.
    with child_run(tracking, c.kind, {KIND_TAG: c.kind, **c.keys}, {}) as run_id:
        return _register(c, tracking.uri, run_id)


def _reused(c: Candidate, uri: str, found) -> Registration:
    # search results carry no aliases; the version itself does
    cl = client(uri)
    mv = cl.get_model_version(c.name, found.version)
    log.info("%s: reused v%s (model key %s unchanged)", c.name, found.version,
             c.keys[MODEL_KEY][:8])
    return Registration(c.name, str(found.version), found.run_id, CHAMPION in set(mv.aliases),
                        f"same model key ({c.keys[MODEL_KEY][:8]}): existing version "
                        "reused, nothing registered", None, reused=True,
                        rejected=VersionTags.from_tags(mv.tags or {}).rejected is not None,
                        metric=c.spec.metric, value=c.metrics.get(c.spec.metric),
                        champion_metrics=_comparable(gate.read_champion(cl, c.name),
                                                     c.eval_hash))


def _comparable(champion: gate.Champion | None, eval_hash: str) -> dict[str, float]:
    """The champion's stored metrics when it was evaluated on ``eval_hash`` too, else none."""
    return dict(champion.metrics) if champion and champion.eval_hash == eval_hash else {}


def _settle(c: Candidate, uri: str) -> Registration | None:
    """Under the model's registry lock: a version with ``c``'s weights that another process
    gated meanwhile (reused), or one a dead process created and never gated (gated now)."""
    gated, ungated = _versions_with_key(uri, c)
    if gated is not None:
        return _reused(c, uri, gated)
    if ungated is not None:  # under the lock, nobody is between creating and gating it
        log.warning("%s v%s was registered but never gated (the process that created it died): "
                    "gating it now", c.name, ungated.version)
        return _gate(c, uri, str(ungated.version), ungated.run_id)
    return None


def _register(c: Candidate, uri: str, run_id: str) -> Registration:
    log_metrics(uri, run_id, c.metrics)
    log_artifacts(uri, run_id, c.artifacts)
    for path, obj in c.documents.items():
        log_dict(uri, run_id, obj, path)
    for path, rows in c.tables.items():
        log_table(uri, run_id, rows, path)
    model_uri, model_id = _log_model(c, uri, run_id)
    tags = VersionTags(c.keys[MODEL_KEY], c.keys[EVAL_KEY], c.eval_hash, c.spec.metric,
                       c.metrics, lineage=c.tags).to_tags()
    cl = client(uri)
    # One writer at a time per model: version numbers and read-champion-then-move-alias are not
    # atomic in MLflow, so concurrent pipelines would race without the lock. The registry
    # resolves `models:/m-<id>` through the global tracking URI, hence global_uri.
    with global_uri(uri), registry_lock(uri, c.name):
        done = _settle(c, uri)  # a concurrent run registered these weights first
        if done is not None:
            return done
        try:
            cl.create_registered_model(c.name, description=model_description(c.name, c.task, []),
                                       tags={TASK_TAG: c.task})
        except Exception:  # noqa: BLE001 - exists already (perhaps created concurrently)
            cl.get_registered_model(c.name)
        mv = cl.create_model_version(c.name, model_uri, run_id=run_id,
                                     tags=tags,
                                     description=c.card, model_id=model_id)
        version = str(_await_ready(cl, c.name, mv.version).version)
        return _gate(c, uri, version, run_id)


def _gate(c: Candidate, uri: str, version: str, run_id: str) -> Registration:
    """Gate ``version`` (the caller holds the model's registry lock) and describe it."""
    cl = client(uri)
    verdict = gate.apply(cl, c.name, version, c.spec, c.metrics, c.eval_hash)
    d = verdict.decision
    refused = (f"**Rejected by the promotion gate:** {d.reason}. No alias points at this "
               "version (`gptops promote --force` overrides it).\n\n" if d.rejected else "")
    cl.update_model_version(c.name, version, description=(
        f"{refused}{c.card}\n{gate.comparison_markdown(verdict.comparison)}"))
    log_dict(uri, run_id, verdict.comparison, "eval/champion_comparison.json")
    state = CHAMPION if d.promote else "rejected, no alias" if d.rejected else CHALLENGER
    (log.warning if d.rejected else log.info)("%s v%s: %s (%s)", c.name, version, state,
                                              d.reason)
    return Registration(c.name, version, run_id, d.promote, d.reason,
                        verdict.previous.version if verdict.previous else None,
                        rejected=d.rejected, metric=c.spec.metric,
                        value=c.metrics.get(c.spec.metric),
                        champion_metrics=_comparable(verdict.previous, c.eval_hash))


def _log_model(c: Candidate, uri: str, run_id: str) -> tuple[str, str]:
    """Log the HF export with the transformers flavor into ``run_id``: (model URI, model id).

    Classifiers keep the flavor but get :mod:`gptops_pyfunc` as their pyfunc loader (MLflow's
    own crashes on long plain-word texts); language models are logged as the flavor does.
    Serving setup and example cost about 0.1-0.3 s per tiny model and ~1 s at GPT-2 size (the
    input example is run once through a reloaded copy, as MLflow validates it).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import mlflow

    model, tokenizer, context = servable(*c.export(), c.task)
    s = serving(c.task, context)
    args: dict[str, Any] = {
        "transformers_model": {"model": model, "tokenizer": tokenizer}, "name": "model",
        "task": c.task, "pip_requirements": _pip_requirements(),
        "model_card": _hf_card(c.card, c.license, c.task), "model_config": s.model_config,
        "signature": s.signature, "input_example": s.input_example}
    with reopened(uri, run_id):
        if c.task == "text-classification":
            # (artifact_path is deprecated but positional: None, the name is in args)
            info = mlflow.models.Model.log(None, flavor=PLAIN_TEXT_FLAVOR,
                                           code_paths=[PLAIN_TEXT], **args)
        else:
            info = mlflow.transformers.log_model(**args)
    return info.model_uri, info.model_id


def _hf_card(text: str, license_id: str, task: str):  # -> huggingface_hub.ModelCard
    """The card MLflow stores with the model (without one it asks the hub, offline or not)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(license=license_id, pipeline_tag=task, library_name="transformers",
                         tags=["gptops"])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _await_ready(cl, name: str, version: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while True:
        mv = cl.get_model_version(name, version)
        if mv.status == "READY" or time.time() > deadline:
            return mv
        time.sleep(0.2)
