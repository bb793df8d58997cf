"""Registered models as users meet them: references, loading, export, listing, classifying.

``ModelRef`` names one version (``<name>@<alias>`` or ``<name>/<version>``); every loader checks
it first, so an unknown model, alias or version is one line listing what exists.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.errors import RegistryError
from gpt.registry.governance import (
    CHAMPION,
    _require_model,
    _version_numbers,
    resolve_alias,
    unknown_alias,
    unknown_model,
    unknown_version,
)
from gpt.registry.listing import read_model_tags, read_versions, sqlite_path
from gpt.registry.tracking import client as _client
from gpt.registry.tracking import global_uri as _global_uri


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


def check_ref_quickly(ref: ModelRef) -> None:
    """Refuse an unknown model, alias or version of a workspace's SQLite registry in well under
    a second, before MLflow starts (the same lines as :func:`_check_ref`, which still runs)."""
    path = sqlite_path(ref.uri)
    models = read_model_tags(path) if path else None
    rows = read_versions(path, ref.name) if models is not None and path else None
    if models is None or rows is None:
        return  # another store: MLflow checks it
    if ref.name not in models:
        raise unknown_model(ref.name, ref.uri, models, "; run `gptops run` first")
    version = ref.version.strip().removeprefix("v")
    if version and version not in {r["version"] for r in rows}:
        raise unknown_version(ref.name, ref.version, (r["version"] for r in rows))
    aliases = {a: r["version"] for r in rows for a in r["aliases"]}
    if not version and ref.alias not in aliases:
        raise unknown_alias(ref.name, ref.alias, ref.uri, aliases)


def _check_ref(ref: ModelRef, client) -> None:
    """Unknown model, alias or version: one line listing what exists."""
    if not ref.version:
        resolve_alias(ref.uri, ref.name, ref.alias, client)
        return
    _require_model(client, ref.uri, ref.name)
    versions = _version_numbers(client, ref.name)
    if ref.version.strip().removeprefix("v") not in versions:
        raise unknown_version(ref.name, ref.version, versions)


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
    path = sqlite_path(tracking_uri)
    rows = read_versions(path, name) if path else None
    if rows is not None:  # a workspace's SQLite registry: read directly, without MLflow's start-up
        return rows
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
