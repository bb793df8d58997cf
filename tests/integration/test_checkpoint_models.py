"""Pretraining checkpoints as MLflow logged models, system metrics, and registering a checkpoint.

One real pretraining on a small workspace (real MLflow on SQLite): 5 checkpoints written, the
newest 3 kept; each kept one is a logged model holding the run's validation loss at its step,
ranked by ``search_logged_models``; the run has system metrics; ``register-checkpoint``
registers one that is not the last, through the gate, with its lineage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import RUN_OVERRIDES

pytestmark = pytest.mark.slow

#: 30 steps, a checkpoint every 30 // 4 = 7 steps and at the last: 7, 14, 21, 28, 30 written,
#: 21, 28, 30 kept. Evaluation every 15 steps and at each checkpoint.
OVERRIDES = [*RUN_OVERRIDES, "train.checkpoints=4", "registry.system_metrics_interval=0.5"]
KEPT = [21, 28, 30]
GPTOPS = str(Path(sys.executable).parent / "gptops")


def _gptops(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    sets = [a for o in OVERRIDES for a in ("--set", o)]
    return subprocess.run(
        [GPTOPS, *args, "--workdir", str(ws), *sets],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture(scope="module")
def trained(data_ready, tmp_path_factory):
    from gpt import dvc_repo, registry
    from gpt.config import load_params
    from gpt.pipeline import keys
    from gpt.pipeline.context import RunContext
    from gpt.pipeline.steps import pretrain_step

    ws = data_ready(tmp_path_factory.mktemp("ckpt-models") / "ws")
    params = load_params(ws / "params.yaml", overrides=OVERRIDES)
    ctx = RunContext.of(ws, params, data_version=dvc_repo.data_version(ws))
    with registry.pipeline_run(ctx.tracked(), "pretrain-with-checkpoints") as tracking:
        ctx = replace(ctx, tracking=tracking)
        result = pretrain_step(ctx)
    assert result.steps == 30 and not result.reused
    return ctx, result, keys.pretrain(params, ctx.data_version)


def test_each_kept_checkpoint_is_a_logged_model_with_its_step_val_loss_and_dataset(trained):
    import mlflow
    from mlflow.entities import LoggedModelStatus

    from gpt import checkpoint as ckpt
    from gpt.registry import checkpoints, client, tags
    from gpt.registry.tracking import global_uri

    ctx, result, key = trained
    folder = Path(result.out_dir) / "checkpoints"
    assert [int(p.name.removeprefix("ckpt-")) for p in ckpt.list_checkpoints(folder)] == sorted(
        KEPT, reverse=True
    )
    c = client(ctx.tracking.uri)
    history = {m.step: m.value for m in c.get_metric_history(result.run_id, "train/val_loss")}
    assert {7, 14, 15, 21, 28, 30} <= set(history)  # evaluated at every checkpoint

    models = checkpoints.kept(ctx.tracking.uri, ctx.tracking.experiment, key.digest)
    assert sorted(checkpoints.step_of(m) for m in models) == KEPT  # 7 and 14 were rotated out
    for m in models:
        step = checkpoints.step_of(m)
        assert m.source_run_id == result.run_id and m.status == LoggedModelStatus.READY
        assert m.tags[tags.CHECKPOINT_PATH] == str((folder / f"ckpt-{step:08d}").resolve())
        assert m.tags[tags.STEP_KEY] == key.digest
        assert m.tags[tags.DATA_VERSION] == ctx.data_version
        val = [x for x in m.metrics if x.key == "train/val_loss"]
        assert [(x.step, x.value) for x in val] == [(step, history[step])]
        assert val[0].dataset_name == f"tokens-{ctx.data_version}"
        assert val[0].dataset_digest == ctx.data_version
        # linked, not copied: the model's artifacts are the manifest only
        local = mlflow.artifacts.download_artifacts(
            f"{m.artifact_location}", tracking_uri=ctx.tracking.uri
        )
        assert sorted(os.listdir(local)) == ["manifest.json"]
    # the run's curve holds each point once (the model's metrics are the run's own points)
    assert len(c.get_metric_history(result.run_id, "train/val_loss")) == len(history)

    with global_uri(ctx.tracking.uri):
        ranked = mlflow.search_logged_models(
            experiment_ids=[c.get_run(result.run_id).info.experiment_id],
            filter_string=f"tags.step_key = '{key.digest}'",
            order_by=[{"field_name": "metrics.train/val_loss", "ascending": True}],
            output_format="list",
        )
    best = min(KEPT, key=lambda s: history[s])
    assert [checkpoints.step_of(m) for m in ranked][0] == best
    assert checkpoints.step_of(models[0]) == best


def test_the_training_run_logs_system_metrics(trained):
    from gpt.registry import client

    ctx, result, _ = trained
    metrics = client(ctx.tracking.uri).get_run(result.run_id).data.metrics
    for name in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert name in metrics, sorted(metrics)
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_register_checkpoint_registers_a_non_last_one_through_the_gate(trained):
    from gpt.registry import checkpoints, client
    from gpt.registry.tags import (
        CHECKPOINT_MODEL,
        CHECKPOINT_RUN,
        CHECKPOINT_STEP,
        VersionTags,
    )

    ctx, result, key = trained
    ws = ctx.workdir
    listed = _gptops(ws, "register-checkpoint", "--list", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = json.loads(listed.stdout)
    assert sorted(r["step"] for r in rows) == KEPT

    unknown = _gptops(ws, "register-checkpoint", "7")
    assert unknown.returncode == 2
    text = unknown.stdout + unknown.stderr
    lines = [ln for ln in text.splitlines() if "step 7" in ln]
    assert lines and "kept: 21, 28, 30" in lines[0], text[-2000:]
    assert "Traceback" not in text

    step = 21
    out = _gptops(ws, "register-checkpoint", str(step), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    reg = json.loads(out.stdout)
    c = client(ctx.tracking.uri)
    mv = c.get_model_version(reg["name"], reg["version"])
    t = VersionTags.from_tags(mv.tags)
    model = next(
        m
        for m in checkpoints.kept(ctx.tracking.uri, ctx.tracking.experiment, key.digest)
        if checkpoints.step_of(m) == step
    )
    assert t.model_key == f"{key.digest}-step{step}"
    assert t.lineage[CHECKPOINT_STEP] == str(step)
    assert t.lineage[CHECKPOINT_MODEL] == model.model_id
    assert t.lineage[CHECKPOINT_RUN] == result.run_id
    assert t.data_version == ctx.data_version and t.git_commit and t.code_hash
    assert t.decision  # gated, like any candidate
    assert "val_ppl" in t.metrics and t.eval_hash
    # registered again: the same weights, the version is reused
    again = _gptops(ws, "register-checkpoint", str(step), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["reused"]
