"""Token shards (``train-NNNNN.bin``/``val-NNNNN.bin`` memmaps, ``meta.json``) and batches.

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
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from gpt.data.tokenizer import EOT
from gpt.errors import DataError

if TYPE_CHECKING:  # torch is imported where batches are drawn: the data stages need none
    import torch

META = "meta.json"


def is_val_doc(doc_id: str, val_fraction: float, seed: int) -> bool:
    """Stable document-level split: hash(seed, id) mapped to [0, 1)."""
    h = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < val_fraction


#: Token shards: ``train-00000.bin``/``val-00000.bin``, one pair per clean shard.
TOKEN_SHARD = "{split}-{index:05d}.bin"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


def _encode(tok: Tokenizer, texts: list[str]) -> list:
    """``encode_batch`` without character offsets (not needed here, and slower to compute)."""
    fast = getattr(tok, "encode_batch_fast", None)
    return fast(texts) if fast is not None else tok.encode_batch(texts)


def encode_shard(texts: Sequence[str], doc_ids: Sequence[str], tok: Tokenizer, out_dir: Path,
                 index: int, val_fraction: float, seed: int,
                 batch_size: int = 1024) -> dict[str, dict[str, Any]]:
    """Encode one shard's documents (batched) into ``train-<index>.bin``/``val-<index>.bin``.

    Each document is followed by the end-of-text token. Files are written under temp names and
    renamed when complete; a split without documents gets no file.

    Returns:
        Per split: ``{"file", "tokens", "docs", "sha256"}`` (``file`` is None when empty).
    """
    out_dir = Path(out_dir)
    dtype = token_dtype(tok.get_vocab_size())
    eot = tok.token_to_id(EOT)
    names = {s: TOKEN_SHARD.format(split=s, index=index) for s in SPLITS}
    tmp = {s: out_dir / f".{names[s]}.tmp-{os.getpid()}" for s in SPLITS}
    info = {s: {"file": names[s], "tokens": 0, "docs": 0} for s in SPLITS}
    hashes = {s: hashlib.sha256() for s in SPLITS}
    handles = {s: p.open("wb") for s, p in tmp.items()}
    try:
        for start in range(0, len(texts), batch_size):
            flat: dict[str, list[int]] = {"train": [], "val": []}
            for doc_id, enc in zip(doc_ids[start:start + batch_size],
                                   _encode(tok, list(texts[start:start + batch_size])),
                                   strict=True):
                split = "val" if is_val_doc(doc_id, val_fraction, seed) else "train"
                flat[split].extend(enc.ids)
                flat[split].append(eot)
                info[split]["docs"] += 1
            for split, ids in flat.items():
                if ids:
                    data = np.asarray(ids, dtype=dtype).tobytes()
                    handles[split].write(data)
                    hashes[split].update(data)
                    info[split]["tokens"] += len(ids)
    except BaseException:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    finally:
        for fh in handles.values():
            fh.close()
    for split in SPLITS:
        if info[split]["tokens"]:
            os.replace(tmp[split], out_dir / names[split])
            info[split]["sha256"] = hashes[split].hexdigest()
        else:
            tmp[split].unlink()
            info[split]["file"] = None
    return info


def write_meta(out_dir: Path, shards: list[dict[str, dict[str, Any]]], tok: Tokenizer,
               val_fraction: float, seed: int, sources: list[str] | None = None,
               shard_sources: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    """``meta.json``: totals and the manifest of token shards (per-shard tokens and SHA-256).

    A mixture (``sources``: its sources in ``data.sources`` order; ``shard_sources``: each
    shard's index among them) adds ``sources`` with their token counts, and each shard's
    ``source``, so training draws each source's share from its own shards.

    Raises:
        DataError: a split has no documents (too few to split).
    """
    vocab = tok.get_vocab_size()
    totals = {f"{s}_{what}": sum(sh[s][what] for sh in shards) for s in SPLITS
              for what in ("tokens", "docs")}
    if not totals["train_docs"] or not totals["val_docs"]:
        n = totals["train_docs"] + totals["val_docs"]
        raise DataError(f"{n} documents are too few to split into train and val with "
                        f"tokenizer.val_fraction={val_fraction}; add documents")
    tagged = [{} for _ in shards] if shard_sources is None else \
        [{"source": i} for i in shard_sources]
    mixed: dict[str, Any] = {}
    if sources is not None and shard_sources is not None:
        mixed["sources"] = [{"source": name, **{
            f"{s}_tokens": sum(sh[s]["tokens"] for sh, i in zip(shards, shard_sources,
                                                                 strict=True) if i == k)
            for s in SPLITS}} for k, name in enumerate(sources)]
    meta = {"vocab_size": vocab, "dtype": token_dtype(vocab).name,
            "eot_id": tok.token_to_id(EOT), **totals, "val_fraction": val_fraction,
            "seed": seed, **extra, **mixed,
            "shards": {s: [{**{k: sh[s][k] for k in ("file", "tokens", "sha256")}, **tag}
                           for sh, tag in zip(shards, tagged, strict=True) if sh[s]["file"]]
                       for s in SPLITS}}
    tmp = Path(out_dir) / f".{META}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, Path(out_dir) / META)
    return meta


def write_token_shards(texts: Sequence[str], doc_ids: Sequence[str], tok: Tokenizer,
                       out_dir: Path, val_fraction: float, seed: int,
                       batch_size: int = 1024) -> dict[str, Any]:
    """Encode documents into one shard pair plus ``meta.json`` (small corpora, tests, benches).

    Streams: each batch is appended to the split's file as one array, so memory stays at one
    batch whatever the corpus size.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shard = encode_shard(texts, doc_ids, tok, out_dir, 0, val_fraction, seed, batch_size)
    try:
        return write_meta(out_dir, [shard], tok, val_fraction, seed)
    except DataError:
        for info in shard.values():
            if info["file"]:
                (out_dir / info["file"]).unlink()
        raise


class _Split:
    """One split's token shards as one sequence (windows may span two shards)."""

    def __init__(self, directory: Path, shards: list[dict[str, Any]], dtype: np.dtype) -> None:
        self.maps = [np.memmap(directory / sh["file"], dtype=dtype, mode="r") for sh in shards]
        self.starts = np.cumsum([0] + [len(m) for m in self.maps])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, i: int, n: int) -> np.ndarray:
        """Tokens ``[i, i + n)`` of the split."""
        s = int(np.searchsorted(self.starts, i, "right")) - 1
        lo = i - int(self.starts[s])
        if lo + n <= len(self.maps[s]):
            return self.maps[s][lo:lo + n]
        pieces, need = [], n
        while need:
            piece = self.maps[s][lo:lo + need]
            pieces.append(piece)
            need -= len(piece)
            s, lo = s + 1, 0
        return np.concatenate(pieces)


class TokenData:
    """Memory-mapped token shards with deterministic random-window batches.

    The shards of a split are read as one sequence (their order in ``meta.json``), so the
    windows, hence the batches, depend only on the data and (seed, step): a resumed run sees
    the batches an uninterrupted run would have.

    A mixture (``mixture``: ``(source, share)`` pairs, ``DataConfig.mixture``) draws each
    batch's rows from the sources by share: systematic sampling puts ``floor`` or ``ceil`` of
    ``share x batch_size`` rows on each source (so over a run the token shares match within
    a fraction of a row per batch), the rows in a seeded order, each a window of its own
    source's shards. The draw still depends only on (seed, step).
    """

    def __init__(self, directory: Path,
                 mixture: Sequence[tuple[str, float]] = ()) -> None:
        directory = Path(directory)
        meta_path = directory / META
        if not meta_path.is_file():
            raise DataError(f"token shards not found in {directory} (no {META}); run "
                            "`gptops data tokenize` first")
        self.meta = json.loads(meta_path.read_text())
        self.dir = directory
        dtype = np.dtype(self.meta["dtype"])
        if "shards" not in self.meta:
            raise DataError(f"{meta_path} lists no token shards (made by an older gptops); "
                            "re-run `gptops data tokenize`")
        self.splits = {s: _Split(directory, self.meta["shards"][s], dtype) for s in SPLITS}
        self.mixture = self._mixture(mixture, dtype)

    def _mixture(self, mixture: Sequence[tuple[str, float]],
                 dtype: np.dtype) -> dict[str, list[tuple[str, _Split, float]]]:
        """Per split, each source's shards as one sequence with its share ({} for none)."""
        made = [m["source"] for m in self.meta.get("sources", [])]
        if not mixture:
            return {}  # one source, or a mixture read as one corpus (its natural shares)
        wanted = [name for name, _ in mixture]
        if sorted(made) != sorted(wanted):
            held = made or "of data.source"
            raise DataError(f"the token shards in {self.dir} hold the sources {held}, "
                            f"data.sources names {wanted}; re-run the data stages (`gptops run` "
                            "or `dvc repro`)")
        out: dict[str, list[tuple[str, _Split, float]]] = {}
        for split in SPLITS:
            out[split] = [(name, _Split(self.dir, [sh for sh in self.meta["shards"][split]
                                                   if sh["source"] == made.index(name)], dtype),
                           share) for name, share in mixture]
        return out

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
        import torch

        if self.mixture:
            windows = self._mixed_windows(split, batch_size, block_size, generator, rows)
        else:
            data = self.splits[split]
            if len(data) <= block_size + 1:
                raise DataError(f"the {split} split has {len(data)} tokens, fewer than "
                                f"model.block_size+2={block_size + 2}; add data or lower "
                                "block_size")
            ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
            if rows is not None:
                ix = ix[rows]
            windows = [data.window(int(i), block_size + 1).astype(np.int64) for i in ix]
        x = torch.stack([torch.from_numpy(w[:-1]) for w in windows])
        y = torch.stack([torch.from_numpy(w[1:]) for w in windows])
        return x, y


    def row_sources(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The mixture source (index in ``data.sources``) of each row of one batch.

        Systematic sampling: ``batch_size`` points ``(u + j) / batch_size`` on the shares laid
        end to end, ``u`` drawn once; then the rows in a seeded random order.
        """
        import torch
        shares = torch.tensor([share for _, _, share in self.mixture["train"]],
                              dtype=torch.float64)
        u = torch.rand(1, generator=generator, dtype=torch.float64)
        points = (u + torch.arange(batch_size, dtype=torch.float64)) / batch_size
        edges = torch.cumsum(shares, 0)
        picked = torch.searchsorted(edges, points, right=True).clamp_(max=len(shares) - 1)
        return picked[torch.randperm(batch_size, generator=generator)]

    def _mixed_windows(self, split: str, batch_size: int, block_size: int,
                       generator: torch.Generator, rows: slice | None) -> list[np.ndarray]:
        import torch

        sources = self.mixture[split]
        for name, data, _ in sources:
            if len(data) <= block_size + 1:
                raise DataError(f"the {split} split of data.sources '{name}' has {len(data)} "
                                f"tokens, fewer than model.block_size+2={block_size + 2}; add "
                                "documents to it or lower model.block_size")
        which = self.row_sources(batch_size, generator)
        where = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        picks = list(zip(which.tolist(), where.tolist(), strict=True))
        if rows is not None:
            picks = picks[rows]
        out = []
        for k, r in picks:
            data = sources[k][1]
            i = min(int(r * (len(data) - block_size - 1)), len(data) - block_size - 2)
            out.append(data.window(i, block_size + 1).astype(np.int64))
        return out


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator for one step's batch: batches depend only on (seed, step, stream)."""
    import torch

    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7_919 + stream) % (2**63))
    return g
