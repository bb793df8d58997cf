"""Benchmarks during pretraining (``train.bench_interval``): the built-in suite's curve is logged
in the pretrain run, and scoring it changes nothing about training (same key, same weights).

The model has dropout, so a scoring that moved torch's random state would change the weights:
lm-eval seeds Python's, numpy's and torch's generators; gpt.benchmarks.score puts them back.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import RUN_OVERRIDES

pytestmark = pytest.mark.slow

STEPS, EVERY, LIMIT = 6, 3, 4


def test_pretraining_logs_the_benchmark_curve_and_trains_the_same(data_ready, tmp_path):
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    from gpt import benchmarks as bm
    from gpt.config import load_params
    from gpt.dvc_repo import data_version
    from gpt.kinds import BASE
    from gpt.pipeline import keys
    from gpt.pipeline.context import RunContext
    from gpt.pipeline.steps import pretrain_step
    from gpt.train import pretrain

    ws = data_ready(tmp_path / "ws")
    run = [
        *RUN_OVERRIDES,
        f"train.max_steps={STEPS}",
        "train.eval_interval=3",
        "train.checkpoints=1",
        "model.dropout=0.1",
    ]
    params = load_params(
        ws / "params.yaml",
        overrides=[*run, f"train.bench_interval={EVERY}", f"train.bench_limit={LIMIT}"],
    )
    plain = load_params(ws / "params.yaml", overrides=run)
    version = data_version(ws)
    assert keys.pretrain(params, version) == keys.pretrain(plain, version)  # in no key

    ctx = RunContext.of(ws, params, data_version=version)
    result = pretrain_step(RunContext.of(ws, params, data_version=version, tracking=ctx.tracked()))
    assert result.steps == STEPS and result.run_id
    client = MlflowClient(result.tracking_uri)
    bench = f"{BASE.metric_prefix}bench."  # train/bench.<task>.<metric>, next to train/loss
    names = {n for n in client.get_run(result.run_id).data.metrics if n.startswith(bench)}
    assert {f"{bench}{bm.CLOZE}.acc", f"{bench}{bm.CHOICE}.acc_norm"} <= names
    for name in names:  # the curve: a point every EVERY steps (and the last)
        history = client.get_metric_history(result.run_id, name)
        assert sorted(m.step for m in history) == list(range(EVERY, STEPS + 1, EVERY))
        assert all(m.value == m.value for m in history)  # finite numbers, not NaN
    acc = client.get_metric_history(result.run_id, f"{bench}{bm.CHOICE}.acc")
    assert all(v.value * LIMIT == round(v.value * LIMIT) for v in acc)  # LIMIT items scored

    # The same training without the scorings: the same weights, bit for bit.
    alone = pretrain(
        plain.model,
        plain.train,
        plain.launch,
        ws / "data" / "tokens",
        tmp_path / "alone",
        resume=False,
    )
    assert alone.loop.steps == STEPS
    with_bench = load_file(
        str(ws / ".gptops" / "runs" / "pretrain" / result.key / "model.safetensors")
    )
    without = load_file(str(tmp_path / "alone" / "model.safetensors"))
    assert with_bench.keys() == without.keys()
    assert all(torch.equal(with_bench[k], without[k]) for k in with_bench)
