"""Data stages at scale: wall time, MB/s per core, peak RSS (workers included), dedup quality.

For each corpus size it writes ciphered copies of the built-in corpus (``bench/corpora.py``:
copies are not duplicates of each other) as 50 MB jsonl files, with exact and near duplicates
(1, 3 and 5 % of words edited) of earlier documents injected into later files, so dedup must
work across files and shards. Then it runs ``gptops data ingest``, ``clean`` and ``tokenize``
in a fresh workspace, each as its own process, sampling the RSS of the stage's whole process
tree (its workers included) every 50 ms. Printed side by side:

- per size and stage: wall time, MB/s per core (input MB / wall / cores), peak RSS;
- the ratio of peak RSS at the largest size over the second largest (target <= 1.25);
- dedup across shards: recall on the injected duplicates (by kind), and the false-positive
  rate (documents flagged ``near_duplicate_of`` that were not injected and whose word 5-gram
  Jaccard similarity to the flagged document is below the threshold, over all kept + flagged).

    .venv/bin/python bench/bench_scale.py --sizes 0.15 0.6 2.4    # GB; 2.4 takes ~30 min here

``--warc`` writes gzipped WARC crawls instead (``bench/webpages.py``: pages with boilerplate,
request and metadata records, files of ``--file-mb``), sized in MB of WARC, and skips the
dedup quality (nothing is injected); ``--shard-mb`` sets ``data.shard_mb``, so small corpora
span several shards, as large ones do at the default:

    .venv/bin/python bench/bench_scale.py --warc --sizes 0.04 0.16 --shard-mb 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import write_corpus  # noqa: E402
from bench.webpages import write_warc_corpus  # noqa: E402
from gpt.data.shards import read_parts  # noqa: E402
from gpt.layout import Workspace  # noqa: E402

STAGES = ("ingest", "clean", "tokenize")
TARGET_RSS_GB = 2.5
TARGET_RATIO = 1.25
SHARES = (0.0, 0.01, 0.03, 0.05)


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        tree = [proc, *proc.children(recursive=True)]
    except psutil.Error:  # the stage just ended
        return 0
    for p in tree:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_stage(ws: Path, stage: str) -> tuple[float, int]:
    """Run one stage as a process; (wall seconds, peak RSS of its process tree)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GPTOPS_PROGRESS": "plain"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "data", stage, "-w", str(ws)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak = psutil.Process(proc.pid), [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(ps))
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{stage} failed:\n{out[-3000:]}")
    return time.perf_counter() - t0, peak[0]


def shingles(text: str, n: int = 5) -> set:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / max(1, len(sa | sb))


def dedup_quality(ws: Path, corpus: Path, injected: dict[str, tuple[str, float]],
                  threshold: float) -> dict[str, float]:
    rejected = read_parts(Workspace(ws).clean, "clean", "rejected-", ["doc_id", "name", "reason"])
    reason = dict(zip(rejected["name"], rejected["reason"], strict=True))
    out: dict[str, float] = {}
    for share in SHARES:
        names = [n for n, (_, s) in injected.items() if s == share]
        hit = sum(reason.get(n, "").startswith(("duplicate_of=", "near_duplicate_of="))
                  for n in names)
        out[f"recall, {share:.0%} of words edited (n={len(names)})"] = hit / max(1, len(names))
    flagged = rejected[rejected["reason"].str.startswith("near_duplicate_of=")
                       & ~rejected["name"].isin(injected)]
    texts = {}
    want = set(flagged["doc_id"]) | {r.split("=", 1)[1] for r in flagged["reason"]}
    for f in sorted(corpus.glob("*.jsonl")):
        with f.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh, start=1):
                key = f"{f}:{i}"
                if key in want:
                    texts[key] = json.loads(line)["text"]
    false = sum(jaccard(texts[d], texts[r.split("=", 1)[1]]) < threshold
                for d, r in zip(flagged["doc_id"], flagged["reason"], strict=True))
    stats = json.loads((ws / "data/clean_stats.json").read_text())
    reached = stats["docs_kept"] + stats["rejected_by_reason"].get("near_duplicate_of", 0)
    out["false positives (share of documents reaching near-dedup)"] = false / max(1, reached)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.15, 0.6, 2.4], help="GB")
    ap.add_argument("--inject", type=int, default=400, help="duplicates injected per size")
    ap.add_argument("--keep", default="", help="keep the workspaces under this folder")
    ap.add_argument("--warc", action="store_true", help="WARC crawls instead of jsonl")
    ap.add_argument("--file-mb", type=float, default=0, help="MB per file (jsonl 50, WARC 10)")
    ap.add_argument("--shard-mb", type=float, default=0, help="data.shard_mb (0 = params.yaml)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    base = Path(args.keep or tempfile.mkdtemp(prefix="gptops-scale-"))
    rows, quality = [], {}
    from gpt.dvc_repo import ensure_workspace
    from gpt.params_file import apply_data_overrides

    for gb in args.sizes:
        corpus, ws = base / f"corpus-{gb}", base / f"ws-{gb}"
        shutil.rmtree(corpus, ignore_errors=True)
        shutil.rmtree(ws, ignore_errors=True)
        t0 = time.perf_counter()
        if args.warc:
            files = write_warc_corpus(corpus, gb * 1000, args.file_mb or 10.0)
            size, count, injected = sum(f.stat().st_size for f in files), len(files), None
        else:
            written = write_corpus(corpus, mb=gb * 1000, file_mb=args.file_mb or 50,
                                   inject=args.inject, shares=SHARES)
            size, count, injected = written.bytes, len(written.files), written.injected
        print(f"{gb} GB: wrote {size / 1e9:.3f} GB in {count} files "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        ws.mkdir(parents=True)
        subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
        ensure_workspace(ws)
        apply_data_overrides(ws, [f"data.source={corpus}", *(
            [f"data.shard_mb={args.shard_mb}"] if args.shard_mb else [])])
        mb = size / 1e6
        for stage in STAGES:
            wall, rss = run_stage(ws, stage)
            rows.append((gb, stage, wall, mb / wall / cores, rss / 2**30))
            print(f"  {stage:9s} {wall:8.1f} s  {mb / wall / cores:6.2f} MB/s/core  "
                  f"peak RSS {rss / 2**30:5.2f} GB", flush=True)
        from gpt.config import load_params

        threshold = load_params(Workspace(ws).params_yaml).clean.near_dedup_threshold
        if injected is not None:
            quality[gb] = dedup_quality(ws, corpus, injected, threshold)
        shutil.rmtree(corpus)
        if not args.keep:
            shutil.rmtree(ws)

    print(f"\ncores: {cores}; targets: peak RSS <= {TARGET_RSS_GB} GB, "
          f"RSS(largest)/RSS(second) <= {TARGET_RATIO}")
    print(f"{'size':>6s} {'stage':9s} {'wall s':>8s} {'MB/s/core':>10s} {'peak RSS GB':>12s}")
    for gb, stage, wall, rate, rss in rows:
        print(f"{gb:6.2f} {stage:9s} {wall:8.1f} {rate:10.2f} {rss:12.2f}")
    if len(args.sizes) >= 2:
        big, second = args.sizes[-1], args.sizes[-2]
        frame = pd.DataFrame(rows, columns=["gb", "stage", "wall", "rate", "rss"])
        for stage in STAGES:
            a = frame[(frame.gb == big) & (frame.stage == stage)].rss.iloc[0]
            b = frame[(frame.gb == second) & (frame.stage == stage)].rss.iloc[0]
            print(f"RSS {stage:9s} {big} GB / {second} GB: {a / b:.2f}x")
    print("\ndedup across files and shards:")
    for gb, q in quality.items():
        for k, v in q.items():
            print(f"  {gb} GB  {k}: {v:.3f}")


if __name__ == "__main__":
    main()
