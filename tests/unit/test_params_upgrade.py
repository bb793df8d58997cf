"""A workspace whose params.yaml was written by an older gptops still loads, and its file gains
the newer keys (with the project's defaults) the first time a command sets the workspace up."""

from __future__ import annotations

from pathlib import Path

import yaml

from gpt.config import PROJECT_PARAMS, load_params, missing_keys, read_params_file
from gpt.params_file import upgrade_params


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


def _before_launch(tmp_path: Path) -> Path:
    """The project's params.yaml as gptops wrote it before the ``launch`` section: the launch
    keys in ``train``, pretraining's floor and checkpoints as ``min_lr``/``checkpoint_interval``
    (in the profiles too), and a user's own launch values."""
    raw = yaml.safe_load(PROJECT_PARAMS.read_text(encoding="utf-8"))
    launch = raw.pop("launch")
    train = raw["train"]
    for t in [train, *(p["train"] for p in raw["profiles"].values() if p and "train" in p)]:
        t["min_lr"] = round(t.get("lr", train["lr"]) * t.pop("min_lr_factor"), 12)
        t["checkpoint_interval"] = t.get("max_steps", train["max_steps"]) // t.pop("checkpoints")
    train.update({**launch, "device": "cpu", "strategy": "fsdp"})
    path = tmp_path / "params.yaml"
    path.write_text("# my workspace\n" + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_a_params_file_from_before_the_launch_section_loads_as_the_same_run(tmp_path):
    path = _before_launch(tmp_path)
    want = load_params(PROJECT_PARAMS, overrides=["launch.device=cpu", "launch.strategy=fsdp"])
    assert load_params(path) == want
    for profile in ("gpt2-124m",):
        got, project = load_params(path, profile), load_params(PROJECT_PARAMS, profile)
        assert (got.train.min_lr, got.train.checkpoint_interval) == \
            (project.train.min_lr, project.train.checkpoint_interval)


def test_upgrade_moves_the_old_keys_in_the_file_and_says_so_in_one_line(tmp_path, caplog):
    path = _before_launch(tmp_path)
    caplog.set_level("WARNING", logger="gpt.params_file")
    changed = upgrade_params(path)
    assert "train.device -> launch.device" in changed
    assert "train.min_lr -> train.min_lr_factor=0.1" in changed
    assert "profiles.gpt2-124m.train.checkpoint_interval -> " \
           "profiles.gpt2-124m.train.checkpoints=10" in changed
    (line,) = [r.getMessage() for r in caplog.records]
    assert "upgraded" in line and "\n" not in line
    raw = read_params_file(path)
    assert raw["launch"]["device"] == "cpu" and "device" not in raw["train"]
    assert list(raw)[list(raw).index("train") + 1] == "launch"  # placed after train
    assert path.read_text(encoding="utf-8").startswith("# my workspace")
    assert load_params(path) == load_params(PROJECT_PARAMS, overrides=[
        "launch.device=cpu", "launch.strategy=fsdp"])
    assert upgrade_params(path) == []  # said once


def test_the_sft_pairs_and_benchmark_items_scored_carry_over_as_the_evaluation_size(tmp_path):
    raw = yaml.safe_load(PROJECT_PARAMS.read_text(encoding="utf-8"))
    del raw["evaluate"]["max_items"]
    raw["sft"]["eval_examples"], raw["evaluate"]["benchmark_limit"] = 40, 100
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    assert load_params(path) == load_params(PROJECT_PARAMS, overrides=["evaluate.max_items=40"])
    assert sorted(upgrade_params(path)) == ["evaluate.benchmark_limit -> evaluate.max_items",
                                            "sft.eval_examples -> evaluate.max_items"]
    assert read_params_file(path)["evaluate"]["max_items"] == 40


def test_a_runs_data_overrides_change_only_their_lines_and_every_parser_reads_the_file(
        tmp_path):
    """The one-off data overrides a run writes into params.yaml (DVC reads them there) leave the
    rest of the file as the user wrote it. Before: ruamel's round trip reflowed long lines at 80
    columns and dropped quotes, and ``{init_from: hf:gpt2, ...}`` wrapped mid-mapping was
    refused by ruamel's C parser (DVC's, where installed): every run with an override failed."""
    from ruamel.yaml import YAML, main

    from gpt.params_file import apply_data_overrides

    (tmp_path / "params.yaml").write_text(PROJECT_PARAMS.read_text(encoding="utf-8"),
                                          encoding="utf-8")
    apply_data_overrides(tmp_path, ["data.max_docs=400", "tokenizer.vocab_size=512",
                                    'data.source="hf:some/dataset"'])
    before = PROJECT_PARAMS.read_text(encoding="utf-8").splitlines()
    after = (tmp_path / "params.yaml").read_text(encoding="utf-8").splitlines()
    assert len(after) == len(before)
    changed = [(a.split("#")[0].strip(), b.split("#")[0].strip())
               for a, b in zip(before, after, strict=True) if a != b]
    assert [b for _, b in changed] == ["source: hf:some/dataset", "max_docs: 400",
                                       "vocab_size: 512"], changed
    assert main.CParser is not None, "ruamel.yaml.clib (a dependency) is not installed"
    expected = yaml.safe_load(PROJECT_PARAMS.read_text(encoding="utf-8"))
    expected["data"].update(source="hf:some/dataset", max_docs=400)
    expected["tokenizer"]["vocab_size"] = 512
    for loaded in (YAML(typ="safe").load("\n".join(after)),  # C, as DVC reads it
                   YAML(typ="safe", pure=True).load("\n".join(after)),
                   yaml.safe_load("\n".join(after))):
        assert loaded == expected
