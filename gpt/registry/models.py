"""Registered models as users meet them: references, loading, export, listing, classifying.

``ModelRef`` names one version (``<name>@<alias>`` or ``<name>/<version>``); every loader checks
it first, so an unknown model, alias or version is one line listing what exists.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.errors import RegistryError
from gpt.registry.governance import (
    CHAMPION,
    require_model,
    resolve_alias,
    unknown_alias,
    unknown_model,
    unknown_version,
    version_numbers,
)
from gpt.registry.listing import (
    read_model_tags,
    read_storage_location,
    read_versions,
    sqlite_path,
)
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
    require_model(client, ref.uri, ref.name)
    versions = version_numbers(client, ref.name)
    if ref.version.strip().removeprefix("v") not in versions:
        raise unknown_version(ref.name, ref.version, versions)


@dataclass(frozen=True)
class LocalVersion:
    """A version's files on this disk, as MLflow's transformers flavor saved them."""

    model_dir: Path  #: ``save_pretrained`` of the model (config.json, model.safetensors)
    tokenizer_dir: Path  #: ``save_pretrained`` of the tokenizer
    task: str  #: the transformers task it was registered for
    model_class: str  #: e.g. ``GPT2LMHeadModel``


def local_version(ref: ModelRef) -> LocalVersion | None:
    """The files of a workspace's SQLite-registered version when they are on this disk, read
    without MLflow (whose import, store start-up and pyfunc loading take most of the 12–24 s
    `gptops generate` used to take); None = load it through MLflow (another store, remote
    artifacts, another layout)."""
    import yaml

    path = sqlite_path(ref.uri)
    rows = read_versions(path, ref.name) if path else None
    if not path or not rows:
        return None
    version = ref.version.strip().removeprefix("v") or next(
        (r["version"] for r in rows if ref.alias in r["aliases"]), "")
    location = read_storage_location(path, ref.name, version) if version else None
    if not location or not location.startswith("file:"):
        return None
    folder = Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path))
    try:
        flavor = yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8"))
        flavor = flavor["flavors"]["transformers"]
        model_dir = folder / str(flavor["model_binary"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    tokenizer_dir = folder / "components" / "tokenizer"
    if ("tokenizer" not in (flavor.get("components") or [])
            or not (model_dir / "config.json").is_file()
            or not (tokenizer_dir / "tokenizer.json").is_file()):
        return None
    return LocalVersion(model_dir, tokenizer_dir, str(flavor.get("task") or ""),
                        str(flavor.get("pipeline_model_type") or ""))


def _require_task(ref: ModelRef, task: str, expect_task: str | None) -> None:
    if expect_task and task != expect_task:
        raise RegistryError(f"{ref.describe()} is a {task or 'non-transformers'} model, not "
                            f"{expect_task}; pick another with --model (e.g. "
                            f"`gptops models` lists them)")


def model_task(ref: ModelRef) -> str:
    """The transformers task a version was registered for (``text-generation``, ...)."""
    local = local_version(ref)
    if local is not None:
        return local.task
    import mlflow

    client = _client(ref.uri)
    _check_ref(ref, client)
    with _global_uri(ref.uri):
        info = mlflow.models.get_model_info(ref.model_uri)
    return str(info.flavors.get("transformers", {}).get("task", ""))


def load_components(ref: ModelRef, expect_task: str | None = None) -> dict:
    """``{"model": ..., "tokenizer": ...}`` of a registered version (transformers objects):
    from its files when they are on this disk, else via the MLflow flavor.

    Raises:
        RegistryError: unknown model/alias/version, or a model for another task than
            ``expect_task`` (a classifier cannot generate text).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    local = local_version(ref)
    if local is not None and local.model_class:
        _require_task(ref, local.task, expect_task)
        import transformers

        model_class = getattr(transformers, local.model_class)
        return {"model": model_class.from_pretrained(local.model_dir).eval(),
                "tokenizer": transformers.AutoTokenizer.from_pretrained(local.tokenizer_dir)}
    import mlflow

    _require_task(ref, model_task(ref), expect_task)
    with _global_uri(ref.uri):
        return mlflow.transformers.load_model(ref.model_uri, return_type="components")


class TextCodec:
    """A registered tokenizer's text <-> ids, through the ``tokenizers`` library alone (no
    transformers import): ``tokenizer.json`` encodes and decodes as the transformers tokenizer
    saved with it does."""

    def __init__(self, encode: Any, decode: Any, eos_token_id: int | None) -> None:
        self.encode, self.decode, self.eos_token_id = encode, decode, eos_token_id

    @classmethod
    def from_folder(cls, folder: Path) -> TextCodec:
        import json

        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        eos = config.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        return cls(lambda text: tok.encode(text).ids,
                   lambda ids: tok.decode(ids, skip_special_tokens=False),
                   tok.token_to_id(eos) if eos else None)

    @classmethod
    def from_transformers(cls, tok: Any) -> TextCodec:
        return cls(lambda text: tok(text)["input_ids"], tok.decode, tok.eos_token_id)


def load_language_model(ref: ModelRef) -> tuple[Any, TextCodec]:
    """``(gpt.model.GPT, TextCodec)`` of a registered language model, for `gptops generate`:
    straight from the version's safetensors when they are on this disk (torch and tokenizers
    only), else through MLflow.

    Raises:
        RegistryError: unknown model/alias/version, or not a text-generation model.
    """
    local = local_version(ref)
    if local is None or not (local.tokenizer_dir / "tokenizer_config.json").is_file():
        from gpt.hf import from_hf_lm

        comps = load_components(ref, expect_task="text-generation")
        return from_hf_lm(comps["model"]), TextCodec.from_transformers(comps["tokenizer"])
    _require_task(ref, local.task, "text-generation")
    from gpt.hf import load_checkpoint

    model = load_checkpoint(f"hf:{local.model_dir}", key=ref.describe())
    return model, TextCodec.from_folder(local.tokenizer_dir)


def load_champion_components(tracking_uri: str, name: str, alias: str = CHAMPION) -> dict:
    """``{"model": ..., "tokenizer": ...}`` of ``models:/<name>@<alias>``."""
    return load_components(ModelRef(tracking_uri, name, alias))


def predict_labels(ref: ModelRef, texts: list[str]) -> list[dict[str, Any]]:
    """Label and probability per text from a registered classifier, for `gptops predict`:
    gptops' own classifier on the version's safetensors and the ``tokenizers`` library when
    its files are on this disk (no transformers, no MLflow), else through MLflow. Inputs
    longer than the context are cut to it.

    Raises:
        RegistryError: unknown model/alias/version, or not a text-classification model.
    """
    local = local_version(ref)
    if local is None or not (local.tokenizer_dir / "tokenizer.json").is_file():
        return classify(load_components(ref, expect_task="text-classification"), texts)
    _require_task(ref, local.task, "text-classification")
    import torch
    from tokenizers import Tokenizer

    from gpt.finetune import GPTClassifier
    from gpt.hf import read_classifier

    body, score, labels, pad = read_classifier(f"hf:{local.model_dir}", key=ref.describe())
    model = GPTClassifier(body, len(labels), pad).eval()
    with torch.no_grad():
        model.score.weight.copy_(score)
    tok = Tokenizer.from_file(str(local.tokenizer_dir / "tokenizer.json"))
    block = model.body.config.block_size
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok.encode(text).ids[:block] or [model.pad_id]
            probs = model(torch.tensor([ids]), torch.tensor([len(ids)])).softmax(-1)[0]
            i = int(probs.argmax())
            out.append({"text": text, "label": labels[i], "score": float(probs[i])})
    return out


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
    tmp = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    local = local_version(ref)
    if local is not None:  # the files save_pretrained wrote at registration, copied as they are
        task = local.task
        shutil.copytree(local.model_dir, tmp)
        shutil.copytree(local.tokenizer_dir, tmp, dirs_exist_ok=True)
    else:
        comps = load_components(ref)
        task = model_task(ref)
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
