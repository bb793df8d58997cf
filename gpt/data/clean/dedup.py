"""Deduplication across the whole corpus: exact copies, then MinHash near duplicates.

Both run in the parent process on the texts the workers cleaned, after the quality filters, so
a duplicate always points at a kept document: the first one, in corpus order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from gpt.config import CleanConfig
from gpt.data.clean.arrow import byte_offsets, raw_bytes
from gpt.data.clean.filters import DUPLICATE_OF, NEAR_DUPLICATE_OF
from gpt.data.minhash import near_duplicates

#: ``texts(rows)``: the cleaned texts of corpus rows (increasing) as an Arrow array.
TextsOf = Callable[[np.ndarray], pa.Array | pa.ChunkedArray]

_KEY_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9],
                     dtype=np.uint64)


def text_keys(arr: pa.Array) -> np.ndarray:
    """A cheap key per text from its length and first and last 8 bytes.

    Equal texts have equal keys, so only texts that share a key can be exact duplicates;
    exact dedup compares the texts themselves for those few.

    Args:
        arr: a ``large_string`` array.

    Returns:
        A ``uint64`` key per text.
    """
    offsets = byte_offsets(arr)
    data = np.frombuffer(raw_bytes(arr) + bytes(8), dtype=np.uint8)
    nbytes = offsets[1:] - offsets[:-1]
    k = np.arange(8)
    head = data[offsets[:-1, None] + k] * (k < nbytes[:, None])
    tail_at = offsets[1:, None] - 8 + k
    tail = data[np.maximum(tail_at, 0)] * (tail_at >= offsets[:-1, None])
    key = nbytes.astype(np.uint64) * _KEY_MULT[0]
    key ^= np.ascontiguousarray(head, dtype=np.uint8).view(np.uint64)[:, 0] * _KEY_MULT[1]
    key ^= np.ascontiguousarray(tail, dtype=np.uint8).view(np.uint64)[:, 0] * _KEY_MULT[2]
    return key


class _ArrowTexts(Sequence[str]):
    """Texts of an Arrow array as a sequence, converted to ``str`` only when read."""

    def __init__(self, arr: pa.Array | pa.ChunkedArray) -> None:
        self._arr = arr

    def __len__(self) -> int:
        return len(self._arr)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self._arr[i].as_py()


def mark_duplicates(reasons: np.ndarray, ids: np.ndarray, passing: np.ndarray, keys: np.ndarray,
                    sigs: np.ndarray | None, texts: TextsOf, cfg: CleanConfig) -> int:
    """Write ``duplicate_of=<id>`` and ``near_duplicate_of=<id>`` into ``reasons``.

    Args:
        reasons: per corpus row, its reason so far (``""``: passed the filters); updated.
        ids: per corpus row, its ``doc_id``.
        passing: the rows that passed the filters (increasing).
        keys: their ``text_keys``.
        sigs: their MinHash signatures (``None`` unless ``cfg.near_dedup``).
        texts: the cleaned texts of given rows.
        cfg: the ``clean`` section of the params.

    Returns:
        How many documents were found duplicates (exact and near).
    """
    if not len(passing):
        return 0
    copies = _mark_exact(reasons, ids, passing, keys, texts) if cfg.exact_dedup else {}
    duplicates = sum(map(len, copies.values()))
    if cfg.near_dedup and sigs is not None:
        duplicates += _mark_near(reasons, ids, passing, sigs, texts, copies, cfg)
    return duplicates


def _mark_exact(reasons: np.ndarray, ids: np.ndarray, passing: np.ndarray, keys: np.ndarray,
                texts: TextsOf) -> dict[int, list[int]]:
    """Mark the exact copies; returns first kept row -> its copies."""
    copies: dict[int, list[int]] = {}
    # Only texts that share a key can be equal: compare those.
    shared = pd.Series(keys).duplicated(keep=False).to_numpy()
    rows = passing[shared]
    first_of: dict[str, int] = {}
    for i, text in zip(rows.tolist(), texts(rows).to_pylist(), strict=True):
        first = first_of.setdefault(text, i)
        if first != i:
            reasons[i] = f"{DUPLICATE_OF}={ids[first]}"
            copies.setdefault(first, []).append(i)
    return copies


def _mark_near(reasons: np.ndarray, ids: np.ndarray, passing: np.ndarray, sigs: np.ndarray,
               texts: TextsOf, copies: dict[int, list[int]], cfg: CleanConfig) -> int:
    """Mark the near duplicates among the rows still kept; returns how many."""
    alive = reasons[passing] == ""
    rows = passing[alive]
    of = near_duplicates(sigs[alive], cfg.near_dedup_threshold, _ArrowTexts(texts(rows)),
                         cfg.near_dedup_ngram)
    found = np.flatnonzero(of >= 0).tolist()
    for j in found:
        reason = f"{NEAR_DUPLICATE_OF}={ids[rows[of[j]]]}"
        reasons[rows[j]] = reason
        # Exact copies of a document that turned out a near duplicate point past it, at the
        # kept one.
        for copy in copies.get(int(rows[j]), ()):
            reasons[copy] = reason
    return len(found)
