"""Tokenizer encode throughput: our shard writer vs raw HF `tokenizers` batch encode.

Both encode the same documents (the built-in corpus, repeated to --mb) with the same trained
byte-level BPE; ours also splits by document and writes uint16 memmaps. Printed side by side.

    .venv/bin/python bench/bench_tokenize.py --mb 20 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gpt.data.loader import write_token_shards
from gpt.data.sources import read_builtin
from gpt.data.tokenizer import train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=20.0, help="corpus size to encode")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    docs = read_builtin()
    base = docs.text.tolist()
    tok = train_tokenizer(base, args.vocab)
    size = sum(len(t.encode()) for t in base)
    reps = max(1, int(args.mb * 1e6 / size))
    texts = base * reps
    ids = [f"{i}" for i in range(len(texts))]
    mb = size * reps / 1e6

    raw, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for i in range(0, len(texts), 1024):
                tok.encode_batch(texts[i:i + 1024])
            raw.append(mb / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            write_token_shards(texts, ids, tok, Path(tmp), 0.05, 1)
            ours.append(mb / (time.perf_counter() - t0))
    r, o = statistics.median(raw), statistics.median(ours)
    print(f"corpus {mb:.1f} MB, vocab {tok.get_vocab_size()}, median of {args.repeats}")
    print(f"{'HF tokenizers encode_batch':32s} {r:8.2f} MB/s")
    print(f"{'gptops write_token_shards':32s} {o:8.2f} MB/s   ratio {o / r:.2f}x")


if __name__ == "__main__":
    main()
