"""Interop with ``transformers``: export to / import from GPT-2 classes with logits parity, and
pretrained GPT-2 checkpoints to start from (``model.init_from`` / ``tokenizer.pretrained``).

Our ``Linear`` weights are (out, in); GPT-2's ``Conv1D`` stores (in, out), hence the transposes,
done in one place (:func:`_from_hf_state`) for registered models and checkpoints alike. Models
without bias export zero biases (GPT-2 always has them). A padded vocabulary
(``vocab_multiple``) exports its real rows only.

A checkpoint is ``hf:<folder>`` (written by ``save_pretrained``) or ``hf:<hub id>`` (``gpt2``,
``distilgpt2``). A hub id is read from the local Hugging Face cache, and downloaded only when it
is not there, ``HF_HUB_OFFLINE`` is unset and the hub answers. A checkpoint's identity is the
hash of its files (:func:`checkpoint_digest`, :func:`tokenizer_digest`), never its name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt.config import HF_PREFIX, ModelConfig
from gpt.errors import ConfigError
from gpt.model import GPT, GPTConfig

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
#: Weight files in transformers' order of preference (an ``.index.json`` lists its shards).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: Files that make up a tokenizer; those present are hashed into its identity.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")
#: What a hub download fetches: configs, tokenizer and safetensors (no TF/Flax/ONNX copies).
_HUB_PATTERNS = {"tokenizer": ["*.json", "vocab.json", "merges.txt"],
                 "weights": ["*.json", "vocab.json", "merges.txt", "*.safetensors"]}
#: GPT-2 config fields our GPT computes exactly: field -> (GPT2Config's default, accepted).
_ARCHITECTURE: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "activation_function": ("gelu_new", ("gelu_new", "gelu_pytorch_tanh")),  # tanh GELU
    "layer_norm_epsilon": (1e-5, (1e-5,)),
    "scale_attn_weights": (True, (True,)),
    "scale_attn_by_inverse_layer_idx": (False, (False,)),
    "tie_word_embeddings": (True, (True,)),
    "add_cross_attention": (False, (False,)),
}


# --- export ------------------------------------------------------------------------------------


def hf_config(cfg: GPTConfig, eot_id: int, pad_id: int, num_labels: int | None = None,
              id2label: dict[int, str] | None = None):  # -> transformers.GPT2Config
    from transformers import GPT2Config

    extra = {}
    if num_labels is not None:
        extra = {"num_labels": num_labels, "id2label": id2label,
                 "label2id": {v: k for k, v in (id2label or {}).items()}}
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function="gelu_new",
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        layer_norm_epsilon=1e-5, bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=pad_id,
        tie_word_embeddings=True, **extra)


def _body_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our body's state dict under GPT-2 names, biases filled with zeros where absent, the
    embedding cut to the real vocabulary."""
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        name = k.replace("transformer.", "", 1)
        if name == "wte.weight":
            v = v[:model.config.vocab_size]
        out[name] = v.t().contiguous() if k.endswith(_CONV1D) else v.clone()
    C = model.config.n_embd
    zeros = {"ln_1.bias": C, "ln_2.bias": C, "attn.c_attn.bias": 3 * C, "attn.c_proj.bias": C,
             "mlp.c_fc.bias": 4 * C, "mlp.c_proj.bias": C}
    for i in range(model.config.n_layer):
        for suffix, size in zeros.items():
            out.setdefault(f"h.{i}.{suffix}", torch.zeros(size))
    out.setdefault("ln_f.bias", torch.zeros(C))
    return out


def to_hf_lm(model: GPT, eot_id: int, pad_id: int):  # -> transformers.GPT2LMHeadModel
    """A ``GPT2LMHeadModel`` with our weights."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(hf_config(model.config, eot_id, pad_id))
    missing, unexpected = hf.transformer.load_state_dict(_body_to_hf(model), strict=False)
    assert not unexpected, unexpected
    assert all(".attn.bias" in m or ".attn.masked_bias" in m for m in missing), missing
    hf.tie_weights()
    return hf.eval()


def to_hf_classifier(body: GPT, score: torch.nn.Linear, labels: list[str], eot_id: int,
                     pad_id: int):  # -> transformers.GPT2ForSequenceClassification
    """A ``GPT2ForSequenceClassification`` (last non-pad token pooling, like ours)."""
    from transformers import GPT2ForSequenceClassification

    cfg = hf_config(body.config, eot_id, pad_id, num_labels=len(labels),
                    id2label=dict(enumerate(labels)))
    hf = GPT2ForSequenceClassification(cfg)
    missing, unexpected = hf.transformer.load_state_dict(_body_to_hf(body), strict=False)
    assert not unexpected, unexpected
    with torch.no_grad():
        hf.score.weight.copy_(score.weight)
    return hf.eval()


# --- import ------------------------------------------------------------------------------------


def check_architecture(config: Mapping[str, Any], where: str) -> None:
    """A GPT-2 config whose computation our GPT reproduces exactly (else a ConfigError)."""
    if config.get("model_type", "gpt2") != "gpt2":
        raise ConfigError(f"{where} is a {config.get('model_type')!r} model; gptops starts from "
                          "GPT-2-family checkpoints only (model_type gpt2, e.g. gpt2, "
                          "distilgpt2)")
    problems = []
    for field, (default, accepted) in _ARCHITECTURE.items():
        value = config.get(field, default)
        if value not in accepted:
            problems.append(f"{field}={value!r} (needs {' or '.join(map(repr, accepted))})")
    n_inner = config.get("n_inner")
    if n_inner not in (None, 4 * config["n_embd"]):
        problems.append(f"n_inner={n_inner} (needs 4 * n_embd = {4 * config['n_embd']})")
    if config["n_embd"] % config["n_head"]:
        problems.append(f"n_embd={config['n_embd']} not divisible by n_head={config['n_head']}")
    if problems:
        raise ConfigError(f"{where} departs from GPT-2's architecture, which gptops' GPT "
                          f"computes: {', '.join(problems)}; use a GPT-2-family checkpoint")


def _from_hf_state(config: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str,
                   block_size: int | None = None, dropout: float = 0.0,
                   vocab_multiple: int = 1) -> GPT:
    """Our ``GPT`` (eval mode) from a GPT-2 config and state dict (names with or without the
    ``transformer.`` prefix; GPT-2's attention-mask buffers are ignored).

    ``block_size`` below ``n_positions`` keeps the first position embeddings; ``vocab_multiple``
    pads the embedding with zero rows (their logits are dropped, see ``gpt.model``).
    """
    check_architecture(config, where)
    block = block_size or int(config["n_positions"])
    model = GPT(GPTConfig(vocab_size=int(config["vocab_size"]), block_size=block,
                          n_layer=int(config["n_layer"]), n_head=int(config["n_head"]),
                          n_embd=int(config["n_embd"]), dropout=dropout, bias=True,
                          vocab_multiple=vocab_multiple))
    src = {k.removeprefix("transformer."): v for k, v in state.items()}
    sd: dict[str, torch.Tensor] = {}
    for k, target in model.state_dict().items():
        if k.startswith("lm_head"):
            continue  # tied to wte
        name = k.removeprefix("transformer.")
        if name not in src:
            raise ConfigError(f"{where}: weight {name!r} is missing from the checkpoint; save "
                              "it again with save_pretrained")
        v = src[name].to(torch.float32)
        if k.endswith(_CONV1D):
            v = v.t()
        if name == "wpe.weight":
            v = v[:block]
        if name == "wte.weight" and target.size(0) > v.size(0):
            v = torch.cat([v, v.new_zeros(target.size(0) - v.size(0), v.size(1))])
        if v.shape != target.shape:
            raise ConfigError(f"{where}: weight {name!r} has shape {tuple(v.shape)}, its "
                              f"config.json implies {tuple(target.shape)}; the checkpoint is "
                              "inconsistent")
        sd[k] = v.contiguous()
    model.load_state_dict(sd, strict=False)
    return model.eval()


def read_classifier(spec: str, key: str = "model") -> tuple[GPT, torch.Tensor, list[str], int]:
    """The parts of a ``GPT2ForSequenceClassification`` folder: the body as
    :func:`load_checkpoint` reads it, the ``score`` head's weight, the label names (``id2label``)
    and the pad id (``gpt.finetune.GPTClassifier`` puts them together; both pool the last token,
    so it gives the source's logits on an unpadded sequence)."""
    ck = resolve(spec, key)
    config = ck.config()
    state = _read_state(weight_files(ck))
    id2label = config.get("id2label") or {}
    if "score.weight" not in state or not id2label:
        raise ConfigError(f"{ck.where}: not a sequence classifier (no score head or id2label); "
                          "pass a folder written from GPT2ForSequenceClassification")
    labels = [str(id2label[k]) for k in sorted(id2label, key=int)]
    body = _from_hf_state(config, state, ck.where)
    pad = int(config.get("pad_token_id") or 0)
    return body, state["score.weight"].to(torch.float32), labels, pad


def from_hf_lm(hf, vocab_multiple: int = 1) -> GPT:
    """Our ``GPT`` from a ``GPT2LMHeadModel`` (e.g. one loaded from the registry)."""
    return _from_hf_state(hf.config.to_dict(), hf.transformer.state_dict(), "the model",
                          vocab_multiple=vocab_multiple)


# --- checkpoints: hf:<folder or hub id> -----------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint found on this machine."""

    spec: str  #: as written, e.g. ``hf:gpt2``
    path: Path  #: the folder holding its files (a hub id's cached snapshot)
    key: str  #: the parameter that named it, for messages

    @property
    def where(self) -> str:
        return f"{self.key} {self.spec!r}"

    def config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{self.where}: {self.path / 'config.json'} is not valid JSON "
                              f"({exc}); save the model again with save_pretrained") from exc


def _has(path: Path, need: str) -> bool:
    if need == "weights":
        return any((path / n).is_file() for n in WEIGHT_FILES)
    return (path / "tokenizer.json").is_file() or all(
        (path / n).is_file() for n in ("vocab.json", "merges.txt"))


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or env in ("1", "true", "yes", "on")


def _hub_snapshot(repo_id: str, spec: str, key: str, need: str) -> Path:
    """The cached snapshot of ``repo_id`` (downloaded first when online and not cached)."""
    from huggingface_hub import constants, snapshot_download

    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    try:
        path = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
        if (path / "config.json").is_file() and _has(path, need):
            return path
    except Exception:  # noqa: BLE001, S110 - not cached (or not a valid id): look further
        pass
    if _offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        try:
            path = Path(snapshot_download(repo_id, cache_dir=cache,
                                          allow_patterns=_HUB_PATTERNS[need]))
            if need == "weights" and not _has(path, need):  # an old repo without safetensors
                path = Path(snapshot_download(repo_id, cache_dir=cache,
                                              allow_patterns=["pytorch_model*.bin*"]))
            return path
        except Exception as exc:  # noqa: BLE001 - any failure gets the same one-line advice
            from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

            missing = isinstance(exc, RepositoryNotFoundError | GatedRepoError)
            reason = ("the hub has no such model you can read" if missing
                      else f"the hub is unreachable ({type(exc).__name__})")
    raise ConfigError(f"{key} {spec!r}: {repo_id!r} is not in the Hugging Face cache ({cache}) "
                      f"and {reason}; on a machine with network run `hf download {repo_id}` "
                      f"(formerly `huggingface-cli download {repo_id}`) and copy that cache "
                      f"here, or pass a local save_pretrained folder: {key}=hf:/path/to/folder")


def resolve(spec: str, key: str = "model.init_from", need: str = "weights") -> Checkpoint:
    """Find ``hf:<folder or hub id>`` on this machine (``need``: "weights" or "tokenizer").

    Raises:
        ConfigError: a malformed spec, a missing folder, or a hub id neither cached nor
            downloadable (naming how to fetch it).
    """
    name = spec.removeprefix(HF_PREFIX).strip()
    if not spec.startswith(HF_PREFIX) or not name:
        raise ConfigError(f"{key} {spec!r}: write hf:<save_pretrained folder> or hf:<hub id> "
                          "(e.g. hf:gpt2)")
    local = Path(name).expanduser()
    if local.is_dir():
        path = local.resolve()
    elif name.startswith((".", "/", "~")) or local.exists():
        raise ConfigError(f"{key} {spec!r}: folder {local} does not exist; pass a folder "
                          "written by save_pretrained, or a hub id such as hf:gpt2")
    else:
        path = _hub_snapshot(name, spec, key, need)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key} {spec!r}: {path} has no config.json; pass a folder written "
                          "by save_pretrained (model and tokenizer)")
    return Checkpoint(spec, path, key)


def weight_files(ck: Checkpoint) -> list[Path]:
    """The files the weights are read from (an index and its shards, or one file)."""
    for name in WEIGHT_FILES:
        p = ck.path / name
        if not p.is_file():
            continue
        if not name.endswith(".index.json"):
            return [p]
        shards = [ck.path / s for s in sorted(set(json.loads(p.read_text())["weight_map"]
                                                  .values()))]
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ConfigError(f"{ck.where}: shards {missing[:3]} listed in {name} are missing; "
                              "download the checkpoint again")
        return [p, *shards]
    raise ConfigError(f"{ck.where}: no weights in {ck.path} (model.safetensors or "
                      "pytorch_model.bin); save the model there with save_pretrained")


def tokenizer_files(ck: Checkpoint) -> list[Path]:
    """The tokenizer files present (tokenizer.json, or vocab.json + merges.txt, and configs)."""
    if not _has(ck.path, "tokenizer"):
        raise ConfigError(f"{ck.where}: no tokenizer in {ck.path} (tokenizer.json, or vocab.json "
                          "+ merges.txt); save the tokenizer into the same folder with "
                          "save_pretrained")
    return [ck.path / n for n in TOKENIZER_FILES if (ck.path / n).is_file()]


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_digest(files: list[Path], root: Path) -> str:
    """sha256 over (name, content hash) of ``files``; content hashes are cached per file state."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        st = f.stat()  # follows the HF cache's symlinks to the blobs
        h.update(f"{f.relative_to(root).as_posix()}\0"
                 f"{_sha256(str(f.resolve()), st.st_size, st.st_mtime_ns)}\n".encode())
    return h.hexdigest()


def checkpoint_digest(spec: str, key: str = "model.init_from") -> str:
    """sha256 of a checkpoint's ``config.json`` and weight files (64 hex digits).

    Its identity wherever it matters: the pretrain step key, and lineage tags
    (``init_from_sha``). Renaming or moving the folder keeps it; changing a weight changes it.
    """
    ck = resolve(spec, key)
    return _files_digest([ck.path / "config.json", *weight_files(ck)], ck.path)


def tokenizer_digest(spec: str, key: str = "tokenizer.pretrained") -> str:
    """sha256 of a checkpoint's tokenizer files (recorded in ``data/tokens/meta.json``)."""
    ck = resolve(spec, key, need="tokenizer")
    return _files_digest(tokenizer_files(ck), ck.path)


def _read_state(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.name.endswith(".index.json"):
            continue
        if f.suffix == ".safetensors":
            state.update(load_file(str(f)))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def load_checkpoint(spec: str, block_size: int | None = None, dropout: float = 0.0,
                    vocab_multiple: int = 1, key: str = "model.init_from") -> GPT:
    """Our ``GPT`` (eval mode) with a GPT-2 checkpoint's weights; its logits equal the source
    ``GPT2LMHeadModel``'s (fp32) on sequences up to ``block_size`` (default ``n_positions``)."""
    ck = resolve(spec, key)
    return _from_hf_state(ck.config(), _read_state(weight_files(ck)), ck.where, block_size,
                          dropout, vocab_multiple)


def check_model_config(model_cfg: ModelConfig, ck: Checkpoint | None = None) -> None:
    """``model.*`` states the architecture, so with ``init_from`` it must be the checkpoint's:
    the same n_layer, n_head, n_embd and bias, and block_size at most its n_positions (a
    shorter context keeps the first position embeddings). dropout and vocab_multiple are free.

    Raises:
        ConfigError: listing every conflicting value next to the checkpoint's, and the fix.
    """
    ck = ck or resolve(model_cfg.init_from)
    c = ck.config()
    check_architecture(c, ck.where)
    wrong = [(k, getattr(model_cfg, k), c[k]) for k in ("n_layer", "n_head", "n_embd")
             if getattr(model_cfg, k) != c[k]]
    if model_cfg.block_size > c["n_positions"]:
        wrong.append(("block_size", model_cfg.block_size, c["n_positions"]))
    if not model_cfg.bias:
        wrong.append(("bias", False, True))
    if wrong:
        have = ", ".join(f"model.{k}={json.dumps(a)} (checkpoint: {json.dumps(b)})"
                         for k, a, b in wrong)
        fix = " ".join(f"--set model.{k}={json.dumps(b)}" for k, _, b in wrong)
        raise ConfigError(f"{ck.where} does not fit model.*: {have}; add {fix} (with init_from, "
                          "model.* must state the checkpoint's architecture; block_size may be "
                          "smaller than its n_positions)")


def load_pretrained(model_cfg: ModelConfig) -> GPT:
    """The model pretraining starts from: ``model.init_from``'s weights in ``model_cfg``'s
    shape (checked first), with its dropout and vocabulary padding."""
    ck = resolve(model_cfg.init_from)
    check_model_config(model_cfg, ck)
    return load_checkpoint(model_cfg.init_from, model_cfg.block_size, model_cfg.dropout,
                           model_cfg.vocab_multiple)


def load_tokenizer(spec: str, key: str = "tokenizer.pretrained"):  # -> tokenizers.Tokenizer
    """A checkpoint's tokenizer as a ``tokenizers.Tokenizer``, as transformers loads it.

    Raises:
        ConfigError: no tokenizer there, not a fast tokenizer, or no ``<|endoftext|>`` (which
            gptops puts between documents).
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from gpt.data.tokenizer import EOT

    ck = resolve(spec, key, need="tokenizer")
    tokenizer_files(ck)
    try:
        hf_tok = AutoTokenizer.from_pretrained(str(ck.path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ConfigError(f"{ck.where}: transformers cannot load the tokenizer in {ck.path} "
                          f"({type(exc).__name__}: {exc}); save it again with save_pretrained"
                          ) from exc
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{ck.where}: {type(hf_tok).__name__} is not a fast tokenizer; save "
                          "a tokenizer.json (any GPT2TokenizerFast does)")
    tok = Tokenizer.from_str(backend.to_str())  # a copy: no state shared with transformers
    tok.no_truncation()
    tok.no_padding()
    if tok.token_to_id(EOT) is None:
        raise ConfigError(f"{ck.where}: the tokenizer has no {EOT} token, which gptops puts "
                          "between documents; use a GPT-2-family tokenizer")
    return tok


def check_tokens(model_cfg: ModelConfig, meta: Mapping[str, Any], tokens_dir: Path) -> None:
    """The token shards were encoded with ``model.init_from``'s tokenizer, whose vocabulary is
    the checkpoint's.

    Raises:
        ConfigError: encoded with the built-in BPE or another tokenizer (naming the fix).
    """
    spec = model_cfg.init_from
    got = meta.get("pretrained_tokenizer")
    if not got:
        raise ConfigError(f"{tokens_dir} holds tokens of gptops' own BPE, but model.init_from="
                          f"{spec} reads its own tokenizer's ids: add --set tokenizer.pretrained="
                          f"{spec} and run the data stages again (gptops run does)")
    want = tokenizer_digest(spec, "model.init_from")
    if got != want:
        raise ConfigError(f"{tokens_dir} was encoded with another tokenizer (sha256 {got[:12]}) "
                          f"than model.init_from={spec}'s ({want[:12]}): run the tokenize stage "
                          "again (`dvc repro -f -s tokenize` in the workspace)")
    vocab = resolve(spec).config()["vocab_size"]
    if int(meta["vocab_size"]) != int(vocab):
        raise ConfigError(f"model.init_from={spec}: its tokenizer has {meta['vocab_size']} "
                          f"tokens but config.json says vocab_size={vocab}; gptops needs them "
                          "equal (a GPT-2-family checkpoint has both at 50257)")


def save_random_gpt2(folder: Path, n_layer: int = 2, n_head: int = 2, n_embd: int = 64,
                     n_positions: int = 128, vocab_size: int = 50257, eot_id: int | None = None,
                     seed: int = 0) -> Path:
    """A randomly initialised ``GPT2LMHeadModel`` saved with ``save_pretrained`` (GPT-2's
    architecture and initialisation): for benchmarks and tests, offline."""
    from transformers import GPT2Config, GPT2LMHeadModel

    eot = vocab_size - 1 if eot_id is None else eot_id
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=n_positions,
                                    n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                                    bos_token_id=eot, eos_token_id=eot))
    folder = Path(folder)
    hf.save_pretrained(folder)
    return folder
