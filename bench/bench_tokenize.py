"""Tokenize throughput: the tokenize stage's encoding vs raw HF ``tokenizers`` ``encode_batch``.

Both encode the same clean shards (ciphered copies of the built-in corpus, ``bench/corpora.py``,
ingested and cleaned into shards of ``--shard-mb``) with the same trained byte-level BPE, on all
cores: raw ``encode_batch`` (Rust threads) over every text, and the stage's encoding
(``stages.encode_all``: shard by shard, every core on each batch, each shard split by document
into train/val token files with their hashes). The BPE's training (on a bounded sample) is
not timed. Printed side by side; the target is a ratio of at least 0.8.

    .venv/bin/python bench/bench_tokenize.py --mb 50 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpora import write_corpus  # noqa: E402
from gpt.config import load_params  # noqa: E402
from gpt.data import stages  # noqa: E402
from gpt.data.shards import parts, read_part  # noqa: E402
from gpt.data.tokenizer import save_tokenizer, train_tokenizer  # noqa: E402
from gpt.dvc_repo import ensure_workspace  # noqa: E402
from gpt.layout import Workspace  # noqa: E402
from gpt.params_file import apply_data_overrides  # noqa: E402

TARGET = 0.8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=50.0, help="corpus size to encode")
    ap.add_argument("--shard-mb", type=float, default=8.0, help="data.shard_mb")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
        ensure_workspace(ws)
        write_corpus(Path(tmp) / "corpus", args.mb, file_mb=25)
        apply_data_overrides(ws, [f"data.source={Path(tmp) / 'corpus'}",
                                  f"data.shard_mb={args.shard_mb}"])
        params = load_params(Workspace(ws).params_yaml)
        stages.ingest(params, ws)
        stages.clean(params, ws)
        files = parts(Workspace(ws).clean)
        texts = [t for f in files for t in read_part(f, "clean", ["text"])["text"].tolist()]
        mb = sum(len(t.encode()) for t in texts) / 1e6
        tok = train_tokenizer(texts[:20_000], args.vocab)
        out = Path(tmp) / "tokens"
        (out / "_work").mkdir(parents=True)
        save_tokenizer(tok, out / "tokenizer.json")
        jobs = [(str(f), str(out / "tokenizer.json"), i, str(out), 0.05, 1)
                for i, f in enumerate(files)]
        raw, ours = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(0, len(texts), 1024):
                tok.encode_batch(texts[i:i + 1024])
            raw.append(mb / (time.perf_counter() - t0))
            for p in (out / "_work").glob("*"):
                p.unlink()
            t0 = time.perf_counter()
            stages.encode_all(jobs)
            ours.append(mb / (time.perf_counter() - t0))
    r, o = statistics.median(raw), statistics.median(ours)
    print(f"corpus {mb:.1f} MB in {len(files)} clean shards, vocab {tok.get_vocab_size()}, "
          f"{cores} cores, median of {args.repeats}")
    print(f"{'HF tokenizers encode_batch':36s} {r:8.2f} MB/s  {r / cores:6.2f} MB/s/core")
    print(f"{'gptops tokenize stage encoding':36s} {o:8.2f} MB/s  {o / cores:6.2f} MB/s/core"
          f"   ratio {o / r:.2f}x (target >= {TARGET})")


if __name__ == "__main__":
    main()
