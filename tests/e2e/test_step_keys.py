"""Each training step is cached by exactly what it reads.

On a copy of the pipeline fixture's workspace (its own registry): changing ``finetune.lr``
fine-tunes again on the same base and registers one new classifier version only; changing
``evaluate.ppl_batches`` retrains nothing; ``gptops finetune`` with a task file works after
``gptops pretrain``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, RUN_OVERRIDES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def copied(pipeline_run, tmp_path_factory):
    ws, first, _ = pipeline_run
    dst = tmp_path_factory.mktemp("keys") / "ws"
    shutil.copytree(ws, dst, symlinks=True)
    return dst, first


def weights(ws: Path, step: str, key: str) -> Path:
    return ws / ".gptops" / "runs" / step / key / "model.safetensors"


def mtimes(ws: Path, first: dict) -> dict[str, int]:
    return {s: weights(ws, s, first[s]["key"]).stat().st_mtime_ns
            for s in ("pretrain", "finetune", "sft")}


def versions(result: dict) -> dict[str, list[str]]:
    from gpt.registry import list_versions

    out: dict[str, list[str]] = {}
    for v in list_versions(result["tracking_uri"]):
        out.setdefault(v["name"], []).append(v["version"])
    return out


def test_changing_finetune_lr_fine_tunes_again_on_the_same_base(copied, caplog):
    from flows.pipeline import training_pipeline

    ws, first = copied
    before = mtimes(ws, first)
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="gpt"):
        result = training_pipeline(overrides=RUN_OVERRIDES + ["finetune.lr=0.002"],
                                   workdir=str(ws))
    print(f"re-run after changing finetune.lr: {time.perf_counter() - t0:.0f}s "
          f"(finetune {result['finetune']['seconds']:.0f}s)")
    assert result["pretrain"]["reused"] and result["pretrain"]["key"] == first["pretrain"]["key"]
    assert result["sft"]["reused"]
    assert not result["finetune"]["reused"]
    assert result["finetune"]["key"] != first["finetune"]["key"]
    assert mtimes(ws, first) == before  # the base (and the old classifier) untouched
    assert f"pretrain: reused (key {first['pretrain']['key'][:8]})" in caplog.text
    assert versions(result) == {"gptops-base": ["1"], "gptops-package-clf": ["1", "2"],
                                "gptops-sft": ["1"]}
    reg = result["registered"]
    assert reg["base"]["reused"] and reg["sft"]["reused"] and not reg["task"]["reused"]


def test_changing_the_evaluation_retrains_nothing(copied):
    from flows.pipeline import training_pipeline

    ws, first = copied
    before = mtimes(ws, first)
    result = training_pipeline(overrides=RUN_OVERRIDES + ["evaluate.ppl_batches=3"],
                               workdir=str(ws))
    assert all(result[s]["reused"] for s in ("pretrain", "finetune", "sft"))
    assert mtimes(ws, first) == before
    ev, ev0 = result["evaluation"], first["evaluation"]
    assert ev["base"]["key"] != ev0["base"]["key"]  # perplexity over 3 batches, not 4
    # the perplexity part of the evaluation set (the benchmarks part follows it)
    assert ev["base"]["eval_hash"].split("-bench")[0].endswith("-3x16")
    assert ev["task"] == ev0["task"] and ev["sft"] == ev0["sft"]  # reused as they were
    assert all(r["reused"] for r in result["registered"].values())  # same weights, same versions


def gptops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


def test_cli_finetune_on_a_task_file_after_pretrain(copied, tmp_path):
    import pandas as pd

    ws, first = copied
    rows = [{"text": f"{w} {'great lovely fine' if i % 2 else 'awful bad poor'} {i}",
             "label": "pos" if i % 2 else "neg"} for i, w in enumerate(["the film"] * 60)]
    pd.DataFrame(rows).to_csv(tmp_path / "sentiment.csv", index=False)
    sets = [a for o in RUN_OVERRIDES for a in ("--set", o)]
    base = weights(ws, "pretrain", first["pretrain"]["key"])
    mtime = base.stat().st_mtime_ns
    out = gptops("pretrain", "-w", str(ws), *sets, cwd=ws)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"pretrain reused (key {first['pretrain']['key'][:8]})" in out.stdout
    out = gptops("finetune", "-w", str(ws), *sets, "--set", "finetune.task=file", "--set",
                 f"finetune.task_path={tmp_path / 'sentiment.csv'}", cwd=ws)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "finetune done" in out.stdout and "neg, pos" in out.stdout
    assert base.stat().st_mtime_ns == mtime


def test_cli_finetune_without_a_pretrained_base_says_what_to_run(copied):
    ws, _ = copied
    sets = [a for o in RUN_OVERRIDES for a in ("--set", o)]
    out = gptops("finetune", "-w", str(ws), *sets, "--set", "model.n_layer=1", cwd=ws)
    assert out.returncode == 2
    assert "no finished pretrain for these data and params" in out.stdout
    assert "run `gptops pretrain`" in out.stdout and "Traceback" not in out.stdout + out.stderr


def test_fine_tune_and_sft_from_a_registered_base_without_pretraining(copied):
    from flows.pipeline import training_pipeline
    from gpt.registry import list_versions

    ws, first = copied
    before = versions({"tracking_uri": f"sqlite:///{ws / '.gptops' / 'mlflow.db'}"})
    result = training_pipeline(overrides=RUN_OVERRIDES, base="models:/gptops-base/1",
                               workdir=str(ws))
    assert "pretrain" not in result and "base" not in result["evaluation"]
    for step in ("finetune", "sft"):  # a base of its own: new keys, trained again
        assert not result[step]["reused"] and result[step]["key"] != first[step]["key"]
        assert result[step]["info"]["base_version"] == "gptops-base/1"
    after = versions(result)
    assert after["gptops-base"] == before["gptops-base"]  # nothing pretrained or registered
    for name in ("gptops-package-clf", "gptops-sft"):
        assert len(after[name]) == len(before[name]) + 1
        newest = list_versions(result["tracking_uri"], name)[-1]
        assert newest["tags"]["parent_model_version"] == "gptops-base/1"


def test_a_malformed_base_is_one_clear_error(copied):
    ws, _ = copied
    out = gptops("finetune", "-w", str(ws), "--base", "gptops-base", cwd=ws)
    assert out.returncode == 2
    assert "bad --base 'gptops-base': write models:/<name>@<alias>" in out.stdout
