"""A workspace whose params.yaml was written by an older gptops still loads, and its file gains
the newer keys (with the project's defaults) the first time a command sets the workspace up."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpt.config import PROJECT_PARAMS, load_params, missing_keys, read_params_file
from gpt.workspace import upgrade_params


def _older(tmp_path: Path) -> Path:
    """The project's params.yaml without two newer keys, with a user's comment kept."""
    text = PROJECT_PARAMS.read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    del raw["clean"]["languages"]
    del raw["data"]["scrub_raw"]
    path = tmp_path / "params.yaml"
    path.write_text("# my workspace\n" + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_an_older_params_file_loads_with_the_project_defaults(tmp_path):
    path = _older(tmp_path)
    assert sorted(missing_keys(read_params_file(path), read_params_file(PROJECT_PARAMS))) == [
        "clean.languages", "data.scrub_raw"]
    params = load_params(path)
    project = load_params(PROJECT_PARAMS)
    assert params.clean.languages == project.clean.languages
    assert params.data.scrub_raw == project.data.scrub_raw


def test_upgrade_writes_the_missing_keys_once_and_keeps_comments(tmp_path, caplog):
    path = _older(tmp_path)
    assert sorted(upgrade_params(path)) == ["clean.languages", "data.scrub_raw"]
    assert "clean.languages" in caplog.text
    assert path.read_text(encoding="utf-8").startswith("# my workspace")
    assert missing_keys(read_params_file(path), read_params_file(PROJECT_PARAMS)) == []
    assert upgrade_params(path) == []  # nothing more to add: said once
