"""The cleaning engine: shards filtered in batches (in parallel), then deduplicated as one corpus.

Per shard (in a worker process, or a Prefect task through ``mapper``): cut the texts into
batches of about ``_BATCH_BYTES``, normalise, measure, filter, scrub PII, key and (for
near-dedup) sign them. Then, in the parent: duplicate ids, exact and near duplicates across all
shards, and the result frames.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from gpt.config import CleanConfig
from gpt.data.clean.arrow import byte_offsets, chunked, pick, system_allocator
from gpt.data.clean.dedup import mark_duplicates, text_keys
from gpt.data.clean.features import features
from gpt.data.clean.filters import DUPLICATE_ID, QUALITY_REASONS, quality_codes
from gpt.data.clean.normalize import REPLACEMENT_CHAR, SURROGATES, normalize_batch
from gpt.data.clean.report import CleanResult, assemble
from gpt.data.clean.scrub import scrub_batch
from gpt.data.minhash import minhash_signatures
from gpt.data.sources import DOC_COLUMNS
from gpt.errors import DataError

#: Texts per batch are cut at about this many bytes (numpy temporaries stay in cache).
_BATCH_BYTES = 4 << 20

#: mapper(fn, jobs) -> [fn(job) for job in jobs], possibly on other processes or machines.
Mapper = Callable[[Callable[[tuple[pa.ChunkedArray, CleanConfig]], Any], list], list]


@dataclass
class _Part:
    """Per-document results of the filters for one shard (documents in shard order)."""

    cleaned: pa.ChunkedArray  # large_string
    codes: np.ndarray  # QUALITY_REASONS codes
    keys: np.ndarray  # uint64 per cleaned text: equal texts have equal keys (see text_keys)
    pii: dict[int, dict[str, int]]  # index in shard -> kind -> count (documents that passed)
    sigs: np.ndarray | None  # signatures of the documents that passed, in order


def _batches(arr: pa.Array) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``_BATCH_BYTES`` each."""
    offsets = byte_offsets(arr)
    cuts = np.searchsorted(offsets, np.arange(0, offsets[-1], _BATCH_BYTES), "right")
    bounds = sorted({0, len(arr), *(int(c) - 1 for c in cuts if 0 < c - 1 < len(arr))})
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _filter_part(texts: pa.ChunkedArray, cfg: CleanConfig) -> _Part:
    """Normalise, filter and scrub one shard; sign the survivors when near-dedup is on."""
    with system_allocator():
        return _filter_part_batches(texts, cfg)


def _filter_part_batches(texts: pa.ChunkedArray, cfg: CleanConfig) -> _Part:
    pieces: list[pa.Array] = []
    code_parts: list[np.ndarray] = []
    key_parts: list[np.ndarray] = []
    pii: dict[int, dict[str, int]] = {}
    kinds = tuple(cfg.pii)
    if texts.num_chunks > 1 and texts.nbytes < texts.num_chunks * _BATCH_BYTES:
        texts = pa.chunked_array([texts.combine_chunks()])  # many small chunks: one batch loop
    base = 0
    for chunk in texts.chunks:
        for lo, hi in _batches(chunk):
            arr = normalize_batch(chunk.slice(lo, hi - lo))
            codes = quality_codes(arr, features(arr), cfg)
            arr, counts_at = scrub_batch(arr, kinds, np.flatnonzero(codes == 0))
            pii.update({base + lo + i: counts for i, counts in counts_at.items()})
            pieces.append(arr)
            code_parts.append(codes)
            key_parts.append(text_keys(arr))
        base += len(chunk)
    cleaned = pa.chunked_array(pieces, type=pa.large_string())
    codes = np.concatenate(code_parts) if code_parts else np.zeros(0, dtype=np.int8)
    keys = np.concatenate(key_parts) if key_parts else np.zeros(0, dtype=np.uint64)
    sigs = None
    if cfg.near_dedup:
        passing = cleaned.filter(pa.array(codes == 0)).to_pylist()
        sigs = minhash_signatures(passing, cfg.near_dedup_num_perm, cfg.near_dedup_ngram)
    return _Part(cleaned, codes, keys, pii, sigs)


def _filter_part_star(args: tuple[pa.ChunkedArray, CleanConfig]) -> _Part:
    return _filter_part(*args)


def _run(jobs: list[tuple[pa.ChunkedArray, CleanConfig]], workers: int,
         mapper: Mapper | None) -> list[_Part]:
    """The per-shard work: through ``mapper``, a local process pool, or in this process."""
    if mapper is not None:
        return list(mapper(_filter_part_star, jobs))
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            parts = pool.map(_filter_part_star, jobs, chunksize=1)
            pool.close()
            pool.join()
        return parts
    return [_filter_part(*job) for job in jobs]


def clean_shards(shards: list[pd.DataFrame], cfg: CleanConfig, workers: int,
                 mapper: Mapper | None = None) -> CleanResult:
    """Clean several shards as one corpus: filters in parallel, dedup across all shards.

    The result is the same as ``clean_documents`` on the concatenated shards (kept and rejected
    in shard order, then row order). Duplicate ids, exact and near duplicates are found across
    shards, in the parent process, after the workers have filtered and signed their shards.

    Args:
        shards: frames with ``DOC_COLUMNS``.
        cfg: the ``clean`` section of the params.
        workers: processes for the per-shard work; 1 (or one shard) runs in this process.
        mapper: runs the per-shard work instead of the local pool, e.g. as Prefect tasks on a
            Dask cluster (``flows.clean_flow``); it must return results in job order.

    Returns:
        The kept and rejected documents with ``stats`` (see ``clean_documents``).

    Raises:
        DataError: a shard is not a frame with the document columns.
    """
    with system_allocator():
        return _clean_shards(shards, cfg, workers, mapper)


def _clean_shards(shards: list[pd.DataFrame], cfg: CleanConfig, workers: int,
                  mapper: Mapper | None) -> CleanResult:
    frames = [_validated(s) for s in shards]
    frame = (pd.concat(frames, ignore_index=True) if frames
             else _validated(pd.DataFrame(columns=DOC_COLUMNS)))
    n = len(frame)
    originals = chunked(frame["text"])
    dup_id = frame["doc_id"].duplicated().to_numpy()
    # Work units: each shard minus its duplicate-id rows, as positions into ``frame``.
    bounds = np.cumsum([0] + [len(f) for f in frames])
    units = [np.flatnonzero(~dup_id[lo:hi]) + lo for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                    strict=True)]
    units = [u for u in units if len(u)]
    parts = _run([(pick(originals, u), cfg) for u in units], workers, mapper)

    # ``order``: the rows that were filtered, increasing (units are, and come in shard order);
    # ``cleaned`` and ``keys`` are aligned with it. Duplicate-id rows have no cleaned text.
    order = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
    cleaned = pa.chunked_array([c for part in parts for c in part.cleaned.chunks],
                               type=pa.large_string())
    keys = np.concatenate([part.keys for part in parts]) if parts else np.zeros(0, np.uint64)
    at = np.full(n, -1, dtype=np.int64)  # row -> position in ``order``
    at[order] = np.arange(len(order))
    codes = np.zeros(n, dtype=np.int8)
    pii_at: dict[int, dict[str, int]] = {}
    for unit, part in zip(units, parts, strict=True):
        codes[unit] = part.codes
        pii_at.update({int(unit[k]): c for k, c in part.pii.items()})
    reasons = np.array(QUALITY_REASONS, dtype=object)[codes]
    reasons[dup_id] = DUPLICATE_ID
    passing = np.flatnonzero((codes == 0) & ~dup_id)
    duplicates = mark_duplicates(reasons, frame["doc_id"].to_numpy(dtype=object), passing,
                                 keys[at[passing]], _signatures(parts, cfg),
                                 lambda rows: pick(cleaned, at[rows]), cfg)
    keep = reasons == ""
    kept_texts = cleaned.filter(pa.array(keep[order])) if len(order) else cleaned
    return assemble(frame, kept_texts, reasons, originals, len(passing), duplicates,
                    _pii_totals(pii_at, keep), tuple(cfg.pii))


def _signatures(parts: list[_Part], cfg: CleanConfig) -> np.ndarray | None:
    """The MinHash signatures of all documents that passed the filters, in corpus order."""
    if not cfg.near_dedup:
        return None
    sig_rows = [part.sigs for part in parts if part.sigs is not None]
    return np.concatenate(sig_rows) if sig_rows else np.empty((0, cfg.near_dedup_num_perm))


def _pii_totals(pii_at: dict[int, dict[str, int]], keep: np.ndarray) -> dict[str, int]:
    """Kind -> placeholders written into the documents that were kept."""
    pii: dict[str, int] = {}
    for i, counts in pii_at.items():
        if keep[i]:
            for kind, c in counts.items():
                pii[kind] = pii.get(kind, 0) + c
    return pii


def clean_documents(docs: pd.DataFrame, cfg: CleanConfig) -> CleanResult:
    """Clean a frame of documents.

    Args:
        docs: a frame with ``DOC_COLUMNS`` (extra columns are ignored).
        cfg: the ``clean`` section of the params.

    Returns:
        The kept and rejected documents and ``stats``: ``docs_in``, ``docs_kept``,
        ``docs_rejected``, ``rejected_by_reason`` (reason without its ``=<id>`` part -> count),
        ``bytes_in`` (UTF-8 bytes of every input text), ``bytes_out`` (of the kept cleaned texts),
        ``dedup_rate`` (exact + near duplicates / documents that passed the filters),
        ``pii_replacements`` (kind -> placeholders written into kept texts).

    Raises:
        DataError: ``docs`` is not a frame with the document columns.
    """
    return clean_shards([docs], cfg, workers=1)


def _validated(docs: pd.DataFrame) -> pd.DataFrame:
    """Check the document schema; return a copy with string columns and no missing values."""
    if not isinstance(docs, pd.DataFrame):
        raise DataError(f"documents must be a pandas DataFrame with columns {DOC_COLUMNS}, got "
                        f"{type(docs).__name__}")
    missing = [c for c in DOC_COLUMNS if c not in docs.columns]
    if missing:
        raise DataError(f"documents lack column(s) {missing} (have {list(map(str, docs.columns))});"
                        " read them with gpt.data.sources")
    out: dict[str, pd.Series] = {}
    for col in DOC_COLUMNS:
        column = docs[col]
        if isinstance(column.dtype, pd.StringDtype):  # already strings (Arrow: valid UTF-8)
            out[col] = column.fillna("").astype("str").reset_index(drop=True)
            continue
        values = [v if isinstance(v, str) else ("" if _is_missing(v) else str(v))
                  for v in column.tolist()]
        # Lone surrogates (possible in object columns) cannot be stored as UTF-8 (Arrow, parquet):
        # they become U+FFFD here, so the invalid_utf8 check sees them.
        out[col] = pd.Series([v if v.isascii() or not SURROGATES.search(v)
                              else SURROGATES.sub(REPLACEMENT_CHAR, v) for v in values],
                             dtype="str")
    return pd.DataFrame(out, columns=DOC_COLUMNS)


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
