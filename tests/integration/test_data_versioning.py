"""DVC versioning of the data stages, and cleaning fanned out on a local Dask cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import make_workspace

pytestmark = pytest.mark.slow

SMALL_DATA = ["data.max_docs=600", "tokenizer.vocab_size=512"]


def dvc(ws, *args):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, capture_output=True,
                          text=True, check=True).stdout


def test_threshold_change_reruns_only_downstream_and_pull_restores(tmp_path):
    from gpt.workspace import apply_data_overrides, data_version, push, run_stage

    ws = make_workspace(tmp_path / "ws", SMALL_DATA)
    assert [run_stage(ws, s).ran for s in ("ingest", "clean", "tokenize")] == [True] * 3
    push(ws)
    v1 = data_version(ws)
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "v1"],
                   cwd=ws, check=True)
    kept_v1 = len(pd.read_parquet(ws / "data/clean/docs.parquet"))

    apply_data_overrides(ws, ["clean.min_chars=200"])
    assert [run_stage(ws, s).ran for s in ("ingest", "clean", "tokenize")] == \
        [False, True, True]
    v2 = data_version(ws)
    assert v2 != v1
    assert len(pd.read_parquet(ws / "data/clean/docs.parquet")) < kept_v1
    push(ws)

    # Back to v1's commit: drop the workspace data and the local cache, pull from the remote.
    shutil.rmtree(ws / "data")
    shutil.rmtree(ws / ".dvc" / "cache")
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=ws, check=True)  # metrics: in git
    dvc(ws, "pull", "-q")
    assert data_version(ws) == v1
    assert len(pd.read_parquet(ws / "data/clean/docs.parquet")) == kept_v1
    assert "changed" not in dvc(ws, "status")


def test_dask_cleaning_equals_the_stage(tmp_path, prefect_server):
    from flows.clean_flow import clean_flow, dask_runner
    from gpt.config import load_params
    from gpt.data import stages
    from gpt.workspace import run_stage

    ws = make_workspace(tmp_path / "ws", SMALL_DATA)
    run_stage(ws, "ingest")
    local = stages.clean(load_params(ws / "params.yaml"), ws)
    kept_local = pd.read_parquet(ws / "data/clean/docs.parquet")
    rejected_local = pd.read_parquet(ws / "data/clean/rejected.parquet")
    shutil.rmtree(ws / "data/clean")
    on_dask = clean_flow.with_options(task_runner=dask_runner(n_workers=2))(str(ws),
                                                                           shard_docs=150)
    assert on_dask == local
    pd.testing.assert_frame_equal(pd.read_parquet(ws / "data/clean/docs.parquet"), kept_local)
    pd.testing.assert_frame_equal(pd.read_parquet(ws / "data/clean/rejected.parquet"),
                                  rejected_local)
