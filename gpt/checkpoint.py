"""Atomic, verifiable checkpoints.

Layout: ``<dir>/ckpt-<step:08d>/`` holding ``model.safetensors`` (weights), ``state.pt``
(optimizer, scheduler, RNG, step; loaded with ``weights_only=True``) and ``manifest.json``
(step, extra metadata, sha256 of each file). A checkpoint is written into a ``.tmp`` folder, each
file fsynced, then renamed into place, so a crash never leaves a folder that looks complete.
``latest_valid`` returns the newest checkpoint whose hashes verify, skipping corrupt ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gpt.errors import CheckpointError

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
STATE = "state.pt"
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def state_dict_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, de-aliased tensors (tied weights are stored once by safetensors' rules)."""
    sd = model.state_dict()
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        ptr = tensor.data_ptr()
        if ptr in seen:  # tied weight: keep the first name only
            continue
        seen[ptr] = key
        out[key] = tensor.detach().contiguous().cpu()
    return out


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: t.detach().contiguous().cpu() for k, t in tensors.items()}


def save_weights(model: torch.nn.Module, path: Path,
                 tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write weights as safetensors atomically (temp file, fsync, rename).

    ``tensors``: the weights already gathered (a sharded model's), instead of ``model``'s own.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # unique: never another's half file
    save_file(_contiguous(tensors) if tensors is not None else state_dict_for_save(model),
              str(tmp))
    _fsync(tmp)
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into ``model`` (tied weights restored by the module itself)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"weights file {path} is corrupt ({exc}); delete it and "
                              "re-run the step that produced it") from exc
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # Tied weights are saved under one name; the other is filled by the tie itself.
    missing = [m for m in missing if not m.endswith("lm_head.weight")
               and not m.endswith("wte.weight")]
    if missing or unexpected:
        raise CheckpointError(f"weights file {path} does not match the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def save_checkpoint(directory: Path, step: int, model: torch.nn.Module,
                    state: dict[str, Any], meta: dict[str, Any] | None = None,
                    keep: int = 3, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest ``keep`` ones.

    Args:
        directory: the run's checkpoint folder.
        step: the number of optimizer steps completed.
        model: the (unwrapped) model.
        state: tensors/plain values only (optimizer, scheduler, RNG states).
        meta: JSON-serialisable metadata recorded in the manifest.
        keep: how many checkpoints to retain (older ones are deleted after the new one lands).
        tensors: the weights already gathered (a sharded model's), instead of ``model``'s own.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"ckpt-{step:08d}"
    tmp = directory / f".ckpt-{step:08d}.tmp-{os.getpid()}"  # unique per process
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_contiguous(tensors) if tensors is not None else state_dict_for_save(model),
              str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    files = {name: _sha256(tmp / name) for name in (WEIGHTS, STATE)}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files, "meta": meta or {}},
                                           indent=2, sort_keys=True))
    for name in (WEIGHTS, STATE, MANIFEST):
        _fsync(tmp / name)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(directory)
    for old in list_checkpoints(directory)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint folders, newest first (temp folders excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.glob("ckpt-*") if p.is_dir()), reverse=True)


def verify(path: Path) -> dict[str, Any]:
    """Return the manifest of a checkpoint folder, or raise CheckpointError if it is corrupt."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        for name, digest in manifest["files"].items():
            if _sha256(path / name) != digest:
                raise CheckpointError(f"checkpoint {path}: {name} does not match its sha256")
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupt ({exc})") from exc
    return manifest


def latest_valid(directory: Path) -> Path | None:
    """The newest checkpoint that verifies; corrupt ones are logged and skipped."""
    for path in list_checkpoints(directory):
        try:
            verify(path)
            return path
        except CheckpointError as exc:
            log.warning("skipping %s", exc)
    return None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A verified checkpoint's weights as tensors (to load into a sharded model)."""
    try:
        return load_file(str(Path(path) / WEIGHTS))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} is not valid safetensors "
                              f"({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_checkpoint(path: Path, model: torch.nn.Module | None
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify and load a checkpoint into ``model`` (None: the caller loads the weights, see
    :func:`read_weights`); return (state, manifest)."""
    manifest = verify(path)
    if model is not None:
        load_weights(model, Path(path) / WEIGHTS)
    # weights_only: a checkpoint is data, never code; refuse pickled objects.
    try:
        state = torch.load(Path(path) / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"checkpoint {path}: {STATE} holds more than tensors and plain "
                              f"values, refused ({_first_line(exc)})") from exc
    return state, manifest
