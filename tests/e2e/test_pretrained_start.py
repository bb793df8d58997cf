"""The whole flow from a saved GPT-2-shaped folder, as a user with a downloaded ``gpt2`` runs it.

Continued pretraining (its tokenizer and weights) → classification → SFT → registry: the base is
gated against the checkpoint it started from, and every version names where it came from.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import DATA_OVERRIDES, PROJECT_ROOT, RUN_OVERRIDES, make_workspace

pytestmark = pytest.mark.slow


def test_a_pretrained_start_runs_end_to_end_with_honest_lineage(tmp_path, prefect_server):
    from flows.pipeline import training_pipeline
    from gpt.dvc_repo import STAGES, run_stage
    from gpt.hf import checkpoint_digest
    from gpt.registry import list_versions
    from tests.unit.test_hf import make_gpt2_folder

    spec = f"hf:{make_gpt2_folder(tmp_path / 'tiny-gpt2')}"  # 2 layers, 64 wide, 128 positions
    ws = make_workspace(tmp_path / "ws", [*DATA_OVERRIDES, f"tokenizer.pretrained={spec}"])
    assert all(run_stage(ws, s).ran for s in STAGES)  # the data, in the checkpoint's tokens
    # 1. the checkpoint itself becomes version 1 of the base: the registry holds the start
    out = subprocess.run([sys.executable, "-m", "flows.cli", "import", spec, "-w", str(ws),
                          *[a for o in RUN_OVERRIDES for a in ("--set", o)]], cwd=ws,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    # 2. continued pretraining -> classification -> SFT -> registry
    result = training_pipeline(overrides=[*RUN_OVERRIDES, f"model.init_from={spec}",
                                          "train.lr=0.001"], workdir=str(ws))
    base = result["evaluation"]["base"]["metrics"]
    # the gate's baseline is the checkpoint itself, measured on the same validation batches
    assert base["baseline_val_ppl"] > base["val_ppl"]
    reg = result["registered"]
    print({k: (r["version"], r["champion"], r["reason"]) for k, r in reg.items()})
    assert reg["base"]["version"] == "2" and reg["base"]["champion"]
    versions = {(v["name"], v["version"]): v for v in list_versions(result["tracking_uri"])}
    assert set(versions) == {("gptops-base", "1"), ("gptops-base", "2"),
                             ("gptops-package-clf", "1"), ("gptops-sft", "1")}
    for v in versions.values():
        assert v["tags"]["init_from"] == spec
        assert v["tags"]["init_from_sha"] == checkpoint_digest(spec)
    imported, continued = versions["gptops-base", "1"], versions["gptops-base", "2"]
    assert float(imported["tags"]["metric.val_ppl"]) == pytest.approx(
        float(continued["tags"]["metric.baseline_val_ppl"]), rel=1e-5)
    # This checkpoint is random (a real gpt2 is not): worse than a uniform guess, so the import
    # stays challenger and the continued model is the first champion, having beaten its start.
    assert "trivial baseline" in imported["tags"]["promotion_decision"]
    assert imported["aliases"] == ["challenger"] or imported["aliases"] == []
    assert versions["gptops-package-clf", "1"]["tags"]["parent_model_version"] == "gptops-base/2"
