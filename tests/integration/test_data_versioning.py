"""DVC versioning of the data stages, and clean/tokenize fanned out on a local Dask cluster."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import pytest

from gpt.data.shards import read_parts
from tests.conftest import make_workspace

pytestmark = pytest.mark.slow

SMALL_DATA = ["data.max_docs=600", "tokenizer.vocab_size=512"]


def dvc(ws, *args):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, capture_output=True,
                          text=True, check=True).stdout


def test_threshold_change_reruns_only_downstream_and_pull_restores(tmp_path):
    from gpt.dvc_repo import data_version, push, run_stage
    from gpt.params_file import apply_data_overrides

    ws = make_workspace(tmp_path / "ws", SMALL_DATA)
    assert [run_stage(ws, s).ran for s in ("ingest", "clean", "tokenize")] == [True] * 3
    push(ws)
    v1 = data_version(ws)
    subprocess.run(["git", "add", "-A"], cwd=ws, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "v1"],
                   cwd=ws, check=True)
    kept_v1 = len(read_parts(ws / "data/clean", "clean"))

    apply_data_overrides(ws, ["clean.min_chars=200"])
    assert [run_stage(ws, s).ran for s in ("ingest", "clean", "tokenize")] == \
        [False, True, True]
    v2 = data_version(ws)
    assert v2 != v1
    assert len(read_parts(ws / "data/clean", "clean")) < kept_v1
    push(ws)

    # Back to v1's commit: drop the workspace data and the local cache, pull from the remote.
    shutil.rmtree(ws / "data")
    shutil.rmtree(ws / ".dvc" / "cache")
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=ws, check=True)  # metrics: in git
    dvc(ws, "pull", "-q")
    assert data_version(ws) == v1
    assert len(read_parts(ws / "data/clean", "clean")) == kept_v1
    assert "changed" not in dvc(ws, "status")


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dask_clean_and_tokenize_equal_the_stages(tmp_path, prefect_server):
    """Per-shard work as Prefect tasks on a 2-worker LocalCluster: byte-identical outputs."""
    from flows.data_flow import dask_runner, data_flow
    from gpt.config import load_params
    from gpt.data import stages
    from gpt.dvc_repo import run_stage

    ws = make_workspace(tmp_path / "ws", [*SMALL_DATA, "data.shard_mb=0.05"])
    run_stage(ws, "ingest")
    assert len(list((ws / "data/raw").glob("part-*.parquet"))) >= 3
    params = load_params(ws / "params.yaml")
    local = {"clean": stages.clean(params, ws, workers=1),
             "tokenize": stages.tokenize(params, ws)}
    expected = {d: _digests(ws / "data" / d) for d in ("clean", "tokens")}
    shutil.rmtree(ws / "data/clean")
    shutil.rmtree(ws / "data/tokens")
    on_dask = data_flow.with_options(task_runner=dask_runner(n_workers=2))(str(ws))
    assert on_dask == local
    assert {d: _digests(ws / "data" / d) for d in ("clean", "tokens")} == expected


def test_a_mixture_weight_change_reruns_no_data_stage(tmp_path):
    """The weights of ``data.sources`` are read by training only: a weight change leaves the
    data version as it was (ingest's change is recorded, not re-run), a source change does not."""
    from gpt.dvc_repo import data_version, lock_outs, run_stage
    from gpt.params_file import apply_data_overrides

    folders = []
    for name, topic in (("prose", "river"), ("notes", "garden")):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(30):
            (folder / f"{i}.md").write_text(
                f"A note about the {topic} number {i}. It says where the {topic} lies and "
                f"why people walk along it in the morning. The {topic} {i} is old, and the "
                "town keeps a record of each visit in a small book.\n")
        folders.append(folder)

    def mixture(w0, w1, second=folders[1]):
        return ['data.source=""', f"data.sources=[{{source: '{folders[0]}', weight: {w0}}}, "
                                  f"{{source: '{second}', weight: {w1}}}]"]

    # val_fraction 0.2: which documents are val depends on their ids (paths under tmp_path); at
    # 0.05, 60 documents gave no val document in about 1 run of 20
    ws = make_workspace(tmp_path / "ws", [*mixture(0.7, 0.3), "tokenizer.vocab_size=300",
                                          "tokenizer.val_fraction=0.2", "clean.near_dedup=false"])
    stages = ("ingest", "clean", "tokenize")
    assert [run_stage(ws, s).ran for s in stages] == [True] * 3
    v1, outs = data_version(ws), lock_outs(ws)
    apply_data_overrides(ws, mixture(0.2, 0.8))
    assert [run_stage(ws, s).ran for s in stages] == [False] * 3
    assert data_version(ws) == v1 and lock_outs(ws) == outs
    assert "weight: 0.8" in (ws / "dvc.lock").read_text()  # the lock records the new weights
    assert "changed" not in dvc(ws, "status")
    apply_data_overrides(ws, mixture(0.2, 0.8, folders[1] / "1*.md"))
    assert run_stage(ws, "ingest").ran
