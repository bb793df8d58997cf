"""One run context: the params are loaded once, and the flow takes the CLI's checks."""

from __future__ import annotations

import pickle
from dataclasses import replace

import pytest

import gpt.config
from gpt.errors import ConfigError
from gpt.pipeline.context import RunContext, handed_over, prepare_run
from gpt.registry import Tracking


@pytest.fixture()
def reads(monkeypatch) -> list[str]:
    """Every params file gpt.config parses."""
    seen: list[str] = []
    real = gpt.config.read_params_file

    def counted(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(gpt.config, "read_params_file", counted)
    return seen


def test_prepare_run_loads_the_params_once_and_the_flow_takes_them(tmp_path, reads,
                                                                    monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = tmp_path / "ws"
    ctx = prepare_run(ws, "tiny", ["train.max_steps=7"])
    assert reads == [str(gpt.config.PROJECT_PARAMS)]  # not a workspace yet: the project's
    assert ctx.params.train.max_steps == 7 and ctx.workdir == ws.resolve()
    assert ctx.tracking_uri == f"sqlite:///{ws.resolve()}/.gptops/mlflow.db"
    with handed_over(ctx):
        assert prepare_run(str(ws), "tiny", ["train.max_steps=7"]) is ctx
        other = prepare_run(ws, "tiny", ["train.max_steps=8"])  # other inputs: prepared anew
    assert other.params.train.max_steps == 8 and len(reads) == 2
    assert prepare_run(ws, "tiny", ["train.max_steps=7"]) is not ctx  # only within the block


def test_bad_inputs_fail_in_prepare_run(tmp_path):
    with pytest.raises(ConfigError, match="bad --base"):
        prepare_run(tmp_path, "tiny", base="gptops-base")
    with pytest.raises(ConfigError, match="did you mean 'train.max_steps'"):
        prepare_run(tmp_path, "tiny", ["train.maxsteps=5"])
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a gptops workspace"):
        prepare_run(tmp_path, "tiny")


def test_the_context_is_plain_data(tmp_path):
    ctx = replace(prepare_run(tmp_path, "tiny"), data_version="abc",
                  tracking=Tracking("sqlite:///x.db", "e", tags={"k": "v"}))
    assert pickle.loads(pickle.dumps(ctx)) == ctx
    assert ctx.base.pretrained_here and ctx.base.digest  # this run's pretraining
    assert RunContext.of(tmp_path, ctx.params, data_version="abc").base == ctx.base
