"""Fixtures for the browser test: a small workspace whose params.yaml holds every tiny setting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import SMALL


def make_small_workspace(path: Path, data_ready: Callable[[Path], Path]) -> Path:
    """A ``data_ready`` copy (its data stages ran with SMALL's data settings) with SMALL's
    model/train settings written into params.yaml too.

    So a run started from the UI form (which only sets ``max_steps``) is as small as the tests'
    and finds its data stages done.
    """
    from gpt.config import parse_overrides
    from gpt.params_file import apply_data_overrides, round_trip

    ws = data_ready(path)
    rest = apply_data_overrides(ws, SMALL)  # the data settings it has: its stages stay done
    yaml = round_trip()
    params = ws / "params.yaml"
    raw = yaml.load(params.read_text(encoding="utf-8"))
    for key, value in parse_overrides(rest).items():
        section, name = key.split(".", 1)
        raw[section][name] = value
    with params.open("w", encoding="utf-8") as f:
        yaml.dump(raw, f)
    return ws
