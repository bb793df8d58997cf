"""Token shards: ``train.bin``/``val.bin`` memmaps plus ``meta.json``, and random-window batches.

Documents are split into train/val by a hash of their id (not by token position), so no document
leaks across splits and the split is stable when documents are added. Each document is followed by
the end-of-text token. Batches are drawn from a generator seeded by (seed, step), so a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from gpt.data.tokenizer import EOT
from gpt.errors import DataError

META = "meta.json"


def is_val_doc(doc_id: str, val_fraction: float, seed: int) -> bool:
    """Stable document-level split: hash(seed, id) mapped to [0, 1)."""
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < val_fraction


def _write_bin(path: Path, ids: Sequence[list[int]], dtype: np.dtype, eot: int) -> int:
    n = sum(len(x) + 1 for x in ids)
    tmp = path.with_name(path.name + ".tmp")
    arr = np.memmap(tmp, dtype=dtype, mode="w+", shape=(max(n, 1),))
    pos = 0
    for seq in ids:
        arr[pos:pos + len(seq)] = seq
        arr[pos + len(seq)] = eot
        pos += len(seq) + 1
    arr.flush()
    del arr
    os.replace(tmp, path)
    return n


def write_token_shards(texts: Sequence[str], doc_ids: Sequence[str], tok: Tokenizer,
                       out_dir: Path, val_fraction: float, seed: int,
                       batch_size: int = 1024) -> dict[str, Any]:
    """Encode documents (batched, multi-threaded in Rust) into train/val memmaps + meta.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = tok.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab < 2**16 else np.uint32)
    eot = tok.token_to_id(EOT)
    splits: dict[str, list[list[int]]] = {"train": [], "val": []}
    counts = {"train": 0, "val": 0}
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        for doc_id, enc in zip(doc_ids[start:start + batch_size],
                               tok.encode_batch(chunk), strict=True):
            split = "val" if is_val_doc(doc_id, val_fraction, seed) else "train"
            splits[split].append(enc.ids)
            counts[split] += 1
    if not splits["train"] or not splits["val"]:
        raise DataError(f"{len(texts)} documents are too few to split into train and val with "
                        f"tokenizer.val_fraction={val_fraction}; add documents")
    n_train = _write_bin(out_dir / "train.bin", splits["train"], dtype, eot)
    n_val = _write_bin(out_dir / "val.bin", splits["val"], dtype, eot)
    meta = {"vocab_size": vocab, "dtype": dtype.name, "eot_id": eot,
            "train_tokens": n_train, "val_tokens": n_val,
            "train_docs": counts["train"], "val_docs": counts["val"],
            "val_fraction": val_fraction, "seed": seed}
    (out_dir / META).write_text(json.dumps(meta, indent=2))
    return meta


class TokenData:
    """Memory-mapped token shards with deterministic random-window batches."""

    def __init__(self, directory: Path) -> None:
        directory = Path(directory)
        meta_path = directory / META
        if not meta_path.is_file():
            raise DataError(f"token shards not found in {directory} (no {META}); run "
                            "`gptops data tokenize` first")
        self.meta = json.loads(meta_path.read_text())
        self.dir = directory
        dtype = np.dtype(self.meta["dtype"])
        self.splits = {s: np.memmap(directory / f"{s}.bin", dtype=dtype, mode="r")
                       for s in ("train", "val")}

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def batch(self, split: str, batch_size: int, block_size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows (x, y) with y shifted by one token."""
        data = self.splits[split]
        if len(data) <= block_size + 1:
            raise DataError(f"the {split} split has {len(data)} tokens, fewer than "
                            f"model.block_size+2={block_size + 2}; add data or lower block_size")
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64))
                         for i in ix])
        return x, y


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator for one step's batch: batches depend only on (seed, step, stream)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7_919 + stream) % (2**63))
    return g
