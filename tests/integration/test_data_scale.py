"""Data at scale: sharded stages that resume after a kill, shard-size independence, accounting.

The corpus is ciphered copies of the built-in corpus (``bench/corpora.py``) in several jsonl
files, cut into many small shards (``data.shard_mb``) so that every stage works shard by shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.corpora import write_corpus
from gpt.data.shards import read_parts
from tests.conftest import PROJECT_ROOT, make_workspace

pytestmark = [pytest.mark.slow, pytest.mark.scale]

STAGES = ("ingest", "clean", "tokenize")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder, mb=6, file_mb=2, inject=40, shares=(0.0, 0.01, 0.03))
    return folder


def _ws(path: Path, corpus: Path, shard_mb: float) -> Path:
    return make_workspace(path, [f"data.source={corpus}", f"data.shard_mb={shard_mb}",
                                 "tokenizer.vocab_size=512"])


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


#: Loaded first by every Python process of a throttled stage (DVC's stage command included): each
#: shard's completion marker is followed by a pause, so a fast machine cannot finish the stage
#: between two polls of ``_kill_half_way``. The stage's own code is unchanged.
THROTTLE = """
import os, time
_replace = os.replace
def _slow_replace(src, dst, *a, **kw):
    _replace(src, dst, *a, **kw)
    if str(dst).endswith(".done"):
        time.sleep(0.4)
os.replace = _slow_replace
"""


def _stage(ws: Path, stage: str, throttle: Path | None = None, **kw) -> subprocess.Popen:
    path = str(PROJECT_ROOT) if throttle is None else f"{throttle}{os.pathsep}{PROJECT_ROOT}"
    env = {**os.environ, "PYTHONPATH": path, "GPTOPS_DATA_WORKERS": "1",
           "GPTOPS_PROGRESS": "plain"}
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "data", stage, "-w", str(ws)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def _run(ws: Path, stage: str) -> str:
    proc = _stage(ws, stage)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


OUTPUT = {"ingest": "raw", "clean": "clean", "tokenize": "tokens"}
#: Completion markers that show a stage is about half-way (with one worker, shards go in order).
MARKERS = {"ingest": "part-*.done", "clean": "_work/f1-*.done", "tokenize": "_work/tokens-*.done"}


def _kill_half_way(ws: Path, stage: str, shards: int) -> None:
    partial = ws / "data" / f".{OUTPUT[stage]}.partial"
    throttle = ws.parent / "throttle"
    throttle.mkdir(exist_ok=True)
    (throttle / "sitecustomize.py").write_text(THROTTLE)
    proc = _stage(ws, stage, throttle)
    deadline = time.monotonic() + 300
    while len(list(partial.glob(MARKERS[stage]))) < max(1, shards // 2):
        assert proc.poll() is None, f"{stage} ended before it could be killed: " + \
            proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (ws / "data" / OUTPUT[stage]).exists()  # nothing that looks complete
    done = len(list(partial.glob(MARKERS[stage])))
    assert 0 < done < shards, f"killed at {done} of {shards} shards: not part-way"


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus) -> dict[float, Path]:
    """The corpus through the three stages, cut into many small shards (0.3 MB) and into one."""
    root = tmp_path_factory.mktemp("built")
    wss = {mb: _ws(root / f"ws{mb}", corpus, mb) for mb in (0.3, 64)}
    for ws in wss.values():
        for stage in STAGES:
            _run(ws, stage)
    return wss


def test_a_stage_killed_half_way_resumes_and_ends_byte_identical(tmp_path, corpus, built):
    ref = built[0.3]  # the same shard size, never killed
    shards = len(list((ref / "data" / "raw").glob("part-*.parquet")))
    assert shards >= 8
    ws = _ws(tmp_path / "ws", corpus, 0.3)
    for stage in STAGES:
        _kill_half_way(ws, stage, shards)
        out = _run(ws, stage)
        assert "resuming a killed run" in out, out
        assert _digests(ws / "data" / OUTPUT[stage]) == _digests(ref / "data" / OUTPUT[stage])
    assert (ws / "data" / "clean_stats.json").read_text() == \
        (ref / "data" / "clean_stats.json").read_text()


def test_the_shard_size_changes_files_not_results(built):
    """Many shards or one: the same kept and rejected documents, dedup across shards included,
    and the same training batches (windows over the shards read as one sequence)."""
    from gpt.data.loader import TokenData, step_generator

    small, big = built[0.3], built[64]
    assert len(list((small / "data/clean").glob("part-*.parquet"))) >= 10
    assert len(list((big / "data/clean").glob("part-*.parquet"))) == 1
    for prefix in ("part-", "rejected-"):
        a = read_parts(small / "data/clean", "clean", prefix)
        b = read_parts(big / "data/clean", "clean", prefix)
        assert a.equals(b), prefix
    rejected = read_parts(small / "data/clean", "clean", "rejected-")
    # The injected copies sit in later files (so later shards) than their originals.
    assert rejected["reason"].str.startswith("duplicate_of=").sum() >= 10
    stats = [json.loads((ws / "data/clean_stats.json").read_text()) for ws in (small, big)]
    assert stats[0] == stats[1]
    data = [TokenData(ws / "data/tokens") for ws in (small, big)]
    assert len(data[0].meta["shards"]["train"]) >= 10
    for step in range(20):
        xa, ya = data[0].batch("train", 8, 64, step_generator(1, step))
        xb, yb = data[1].batch("train", 8, 64, step_generator(1, step))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for split in ("train", "val"):
        whole = np.concatenate([np.fromfile(small / "data/tokens" / s["file"], np.uint16)
                                for s in data[0].meta["shards"][split]])
        assert whole.tobytes() == (big / "data/tokens" / f"{split}-00000.bin").read_bytes()


def test_hostile_records_are_accounted_for_per_shard(tmp_path):
    """kept + rejected = read, per shard and overall: broken JSONL lines, invalid UTF-8, NUL
    bytes, a 400k-word line, empty files, non-string and missing texts."""
    src = tmp_path / "src"
    src.mkdir()
    good = "A perfectly ordinary sentence about the weather and the sea, said twice. " * 3
    lines = [json.dumps({"text": f"{i}: {good}"}).encode() for i in range(300)]
    lines[5] = b"{broken json"
    lines[9] = b'{"text": "bad \xff\xfe bytes ' + good.encode() + b'"}'
    lines[11] = json.dumps({"text": "nul\x00 " + good}).encode()
    lines[13] = json.dumps({"text": "word " * 400_000}).encode()
    lines[17] = json.dumps({"text": 42}).encode()
    lines[19] = json.dumps({"body": good}).encode()
    lines[23] = json.dumps({"text": ""}).encode()
    (src / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (src / "empty.jsonl").write_bytes(b"")
    (src / "empty.txt").write_bytes(b"")
    ws = make_workspace(tmp_path / "ws", [f"data.source={src}", "data.shard_mb=0.05",
                                          "tokenizer.vocab_size=300"])
    for stage in ("ingest", "clean"):
        _run(ws, stage)
    raw = json.loads((ws / "data/raw/manifest.json").read_text())
    bad = pd.read_parquet(ws / "data/raw/rejected.parquet")
    assert sorted(bad["reason"]) == ["bad_record=empty_text", "bad_record=invalid_json",
                                     "bad_record=no_field_text", "bad_record=text_not_a_string"]
    read = 300 + 1  # the jsonl records and the empty .txt file (a document, too short)
    assert raw["docs"] + raw["bad_records"] == read
    assert len(raw["shards"]) >= 3
    for i, shard in enumerate(raw["shards"]):
        kept = pd.read_parquet(ws / f"data/clean/part-{i:05d}.parquet")
        rejected = pd.read_parquet(ws / f"data/clean/rejected-{i:05d}.parquet")
        assert len(kept) + len(rejected) == shard["docs"], i
    stats = json.loads((ws / "data/clean_stats.json").read_text())
    assert stats["records_read"] == read
    assert stats["docs_kept"] + stats["docs_rejected"] + stats["bad_records"] == read
    assert stats["rejected_by_reason"]["too_long"] == 1  # the 400k-word line
