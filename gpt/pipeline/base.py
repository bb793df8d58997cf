"""The base a fine-tuning step starts from: this run's pretrained model, or a registered one.

``--base models:/gptops-base@champion`` (also ``@challenger`` or ``/3``) fine-tunes a version
already in the registry instead of pretraining. The alias is resolved to a version once, and that
version's identity (name, number and its own ``model_key``) becomes part of the fine-tune and
SFT keys, so moving the alias later retrains, and reusing the same version does not.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from gpt.config import Params
from gpt.errors import ConfigError
from gpt.pipeline import keys

_MODELS_URI = re.compile(r"^models:/(?P<name>[^@/]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class Base:
    """A resolved base: ``spec`` as given, the digest keys use, and the registry version."""

    spec: str  #: "" (this run's pretrained base) or ``models:/<name>@<alias>|/<version>``
    digest: str
    name: str = ""
    version: str = ""

    @property
    def pretrained_here(self) -> bool:
        return not self.spec

    @property
    def pinned(self) -> str:
        """This base as a spec that cannot move: ``models:/<name>/<version>`` ("" = pretrain)."""
        return f"models:/{self.name}/{self.version}" if self.version else ""

    @property
    def lineage(self) -> str:
        """The ``parent_model_version`` tag of models tuned from this base ("" = this run's)."""
        return f"{self.name}/{self.version}" if self.version else ""


def parse(spec: str) -> re.Match | None:
    """``models:/...`` split into name and alias or version (None for ""); else a clear error.

    Raises:
        ConfigError: anything but "" or a ``models:/`` URI.
    """
    if not spec:
        return None
    m = _MODELS_URI.match(spec.strip())
    if not m:
        raise ConfigError(f"bad --base '{spec}': write models:/<name>@<alias> or "
                          "models:/<name>/<version> (e.g. models:/gptops-base@champion)")
    return m


def resolve(spec: str, params: Params, data_version: str, tracking_uri: str) -> Base:
    """Pin ``spec`` to one version (an alias is read now) and give it a digest.

    Raises:
        ConfigError: a malformed spec.
        RegistryError: an unknown model, alias or version (listing what exists).
    """
    m = parse(spec)
    if m is None:
        return Base("", keys.pretrain(params, data_version).digest)
    from gpt.errors import RegistryError
    from gpt.registry import client, resolve_alias
    from gpt.registry.tags import MODEL_KEY

    cl = client(tracking_uri)
    name = m["name"]
    if m["version"]:
        try:
            mv = cl.get_model_version(name, m["version"])
        except Exception as exc:  # noqa: BLE001 - MLflow's RESOURCE_DOES_NOT_EXIST
            raise RegistryError(f"--base {spec}: model '{name}' has no version "
                                f"{m['version']} at {tracking_uri}; `gptops models` lists "
                                "them") from exc
    else:
        mv = resolve_alias(tracking_uri, name, m["alias"], cl)
    identity = f"{name}/{mv.version}/{mv.tags.get(MODEL_KEY, mv.run_id)}"
    return Base(spec, hashlib.sha256(identity.encode()).hexdigest()[:16], name, str(mv.version))


def load(base: Base, tracking_uri: str, params: Params, vocab_size: int):  # -> gpt.model.GPT
    """The registered base as our GPT, checked against this workspace's tokenizer and model.

    Raises:
        ConfigError: the base was trained with another vocabulary or shape than these params.
    """
    from gpt.hf import from_hf_lm
    from gpt.registry import ModelRef, load_components

    comps = load_components(ModelRef(tracking_uri, base.name, version=base.version),
                            expect_task="text-generation")
    model = from_hf_lm(comps["model"])
    c, m = model.config, params.model
    if c.vocab_size != vocab_size:
        raise ConfigError(f"--base {base.spec} (v{base.version}) has a {c.vocab_size}-token "
                          f"vocabulary, this workspace's tokenizer {vocab_size}: fine-tune a "
                          "base trained on this workspace's data")
    shape = ("block_size", "n_layer", "n_head", "n_embd")
    wrong = {k: (getattr(c, k), getattr(m, k)) for k in shape if getattr(c, k) != getattr(m, k)}
    if wrong:
        fix = " ".join(f"--set model.{k}={v[0]}" for k, v in wrong.items())
        raise ConfigError(f"--base {base.spec} (v{base.version}) differs from model.* in "
                          f"params ({', '.join(f'{k}: {a} vs {b}' for k, (a, b) in wrong.items())}"
                          f"); pass {fix}")
    return model
