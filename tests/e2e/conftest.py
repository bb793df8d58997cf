"""Fixtures for the browser test: a small workspace whose params.yaml holds every tiny setting."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SMALL, make_workspace


def make_small_workspace(path: Path) -> Path:
    """Like ``make_workspace(path, SMALL)``, with the model/train settings written in too.

    So a run started from the UI form (which only sets ``max_steps``) is as small as the tests'.
    """
    from ruamel.yaml import YAML

    from gpt.config import parse_overrides
    from gpt.workspace import apply_data_overrides

    ws = make_workspace(path, [])
    rest = apply_data_overrides(ws, SMALL)
    yaml = YAML()
    params = ws / "params.yaml"
    raw = yaml.load(params.read_text(encoding="utf-8"))
    for key, value in parse_overrides(rest).items():
        section, name = key.split(".", 1)
        raw[section][name] = value
    with params.open("w", encoding="utf-8") as f:
        yaml.dump(raw, f)
    return ws
