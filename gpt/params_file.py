"""The workspace's params.yaml as a file: brought to this gptops' keys, and a run's one-off
data overrides written into it (DVC reads them there) and put back after the run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from gpt.config import DATA_SECTIONS, parse_overrides, read_params_file, set_dotted
from gpt.layout import Workspace

log = logging.getLogger(__name__)


def round_trip() -> Any:  # -> ruamel.yaml.YAML
    """ruamel's round-trip YAML for editing a params.yaml in place: comments, quotes and lines
    stay as the user wrote them (a flow mapping written over several lines becomes one), and
    only the values set change. (Its defaults reflow lines at 80 columns and drop quotes:
    ``{init_from: "hf:gpt2", ...}`` became a plain ``hf:gpt2`` inside a wrapped flow mapping,
    which ruamel's C parser, DVC's where installed, refuses.)"""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 1 << 16
    return rt


def upgrade_params(path: Path) -> list[str]:
    """Bring a workspace's params.yaml to this gptops' keys (:func:`gpt.config.upgrade_tree`:
    moved keys carried to their new place, missing keys added with the project's defaults),
    keeping the file's comments and layout; say so in one line. Returns what changed."""
    from gpt.config import PROJECT_PARAMS, upgrade_tree

    if not path.is_file() or path.resolve() == PROJECT_PARAMS:
        return []
    if not any(upgrade_tree(read_params_file(path))):
        return []
    rt = round_trip()
    raw = rt.load(path.read_text(encoding="utf-8"))
    moved, added = upgrade_tree(raw)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        rt.dump(raw, fh)
    os.replace(tmp, path)
    said = ([f"moved {', '.join(moved)}"] if moved else []) + (
        [f"added {', '.join(added)} with the project's defaults"] if added else [])
    log.warning("%s: upgraded to this gptops' keys: %s", path, "; ".join(said))
    return moved + added




def restore_params(workdir: Path) -> bool:
    """Put back the params.yaml a run saved before writing one-off data overrides.

    Also called when a run starts, so a run that was killed cannot leave its overrides behind.
    Returns whether anything was restored.
    """
    ws = Workspace(Path(workdir))
    if not ws.params_backup.is_file():
        return False
    os.replace(ws.params_backup, ws.params_yaml)
    log.info("params.yaml restored: the run's one-off overrides no longer apply (keep them "
             "with --save)")
    return True


def apply_run_overrides(workdir: Path, overrides: list[str] | None,
                        save: bool = False) -> list[str]:
    """Write a run's data overrides into params.yaml (DVC reads them there), for this run only.

    Unless ``save``, the file's previous content is kept aside and :func:`restore_params` puts
    it back when the run ends (``dvc exp run --set-param`` semantics). Returns the non-data
    overrides, which never touch the file.
    """
    workdir = Path(workdir)
    restore_params(workdir)
    params = Workspace(workdir).params_yaml
    before = params.read_bytes() if params.is_file() else None
    rest = apply_data_overrides(workdir, overrides)
    if not save and before is not None and params.read_bytes() != before:
        backup = Workspace(workdir).params_backup
        backup.parent.mkdir(parents=True, exist_ok=True)
        tmp = backup.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(before)
        os.replace(tmp, backup)
    return rest


def apply_data_overrides(workdir: Path, overrides: list[str] | None) -> list[str]:
    """Write overrides of data sections into the workspace's params.yaml (DVC must see them).

    Returns the remaining (non-data) overrides. Like ``dvc exp run --set-param``.
    """
    rest: list[str] = []
    data: dict[str, Any] = {}
    for key, value in parse_overrides(overrides).items():
        if key.split(".")[0] in DATA_SECTIONS:
            data[key] = value
        else:
            rest.append(f"{key}={json.dumps(value)}")
    if data:
        path = Workspace(Path(workdir)).params_yaml
        read_params_file(path)  # clear error if missing or invalid
        rt = round_trip()
        raw = rt.load(path.read_text(encoding="utf-8"))
        for key, value in data.items():
            set_dotted(raw, key, value)
        with path.open("w", encoding="utf-8") as fh:
            rt.dump(raw, fh)
        log.info("wrote data overrides to %s: %s", path, data)
    return rest
