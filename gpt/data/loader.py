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


def write_token_shards(texts: Sequence[str], doc_ids: Sequence[str], tok: Tokenizer,
                       out_dir: Path, val_fraction: float, seed: int,
                       batch_size: int = 1024) -> dict[str, Any]:
    """Encode documents (batched, multi-threaded in Rust) into train/val memmaps + meta.json.

    Streams: each batch is appended to the split's file as one array, so memory stays at one
    batch whatever the corpus size. Files are written under temp names and renamed at the end.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = tok.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab < 2**16 else np.uint32)
    eot = tok.token_to_id(EOT)
    tmp = {s: out_dir / f"{s}.bin.tmp-{os.getpid()}" for s in ("train", "val")}
    docs = {"train": 0, "val": 0}
    tokens = {"train": 0, "val": 0}
    handles = {s: p.open("wb") for s, p in tmp.items()}
    try:
        for start in range(0, len(texts), batch_size):
            flat: dict[str, list[int]] = {"train": [], "val": []}
            for doc_id, enc in zip(doc_ids[start:start + batch_size],
                                   tok.encode_batch(list(texts[start:start + batch_size])),
                                   strict=True):
                split = "val" if is_val_doc(doc_id, val_fraction, seed) else "train"
                flat[split].extend(enc.ids)
                flat[split].append(eot)
                docs[split] += 1
            for split, ids in flat.items():
                if ids:
                    np.asarray(ids, dtype=dtype).tofile(handles[split])
                    tokens[split] += len(ids)
    finally:
        for fh in handles.values():
            fh.close()
    if not docs["train"] or not docs["val"]:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise DataError(f"{len(texts)} documents are too few to split into train and val with "
                        f"tokenizer.val_fraction={val_fraction}; add documents")
    for split, p in tmp.items():
        os.replace(p, out_dir / f"{split}.bin")
    meta = {"vocab_size": vocab, "dtype": dtype.name, "eot_id": eot,
            "train_tokens": tokens["train"], "val_tokens": tokens["val"],
            "train_docs": docs["train"], "val_docs": docs["val"],
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
              generator: torch.Generator, rows: slice | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows (x, y) with y shifted by one token.

        ``rows``: only these rows of the ``batch_size`` drawn (one process's share of a global
        batch: the draw, hence every row, is the same whatever the share).
        """
        data = self.splits[split]
        if len(data) <= block_size + 1:
            raise DataError(f"the {split} split has {len(data)} tokens, fewer than "
                            f"model.block_size+2={block_size + 2}; add data or lower block_size")
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        if rows is not None:
            ix = ix[rows]
        x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64))
                         for i in ix])
        return x, y


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator for one step's batch: batches depend only on (seed, step, stream)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7_919 + stream) % (2**63))
    return g
