"""The cleaning engine: shard by shard on a worker pool, with dedup across the whole corpus.

Three passes, each with bounded memory (one shard, plus a few bytes per document):

1. **filter** (per shard, in worker processes or Prefect tasks through ``mapper``): cut the texts
   into batches of about ``_BATCH_BYTES``, normalise, measure, filter, scrub PII; hash each doc
   id and cleaned text (16 bytes each); sign and band the survivors (near-dedup). Results go to
   scratch files, each shard completed (marked) once all its files are in place.
2. **dedup** (in the parent, over the compact per-document arrays of all shards): duplicate ids
   and exact copies (the first occurrence of each hash is kept), then near duplicates: MinHash
   LSH band by band across all shards (one band's keys in memory at a time), candidates
   confirmed on their signatures, read from the shards' files.
3. **write** (per shard): kept and rejected documents with their reasons (``duplicate_of=<id>``
   names the first occurrence in corpus order), and the shard's counts.

``clean_shards``/``clean_documents`` run the same engine on frames (through a temp folder), so
the property tests check the engine the data stage runs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from gpt.config import CleanConfig
from gpt.data.clean.arrow import byte_offsets, chunked, raw_bytes, system_allocator
from gpt.data.clean.decontam import EvalSets
from gpt.data.clean.features import features
from gpt.data.clean.filters import (
    CONTAMINATED,
    CONTAMINATED_CODE,
    DUPLICATE_ID,
    DUPLICATE_OF,
    DUPLICATE_URL_OF,
    LANGUAGE,
    LANGUAGE_CODE,
    NEAR_DUPLICATE_OF,
    QUALITY_REASONS,
    quality_codes,
)
from gpt.data.clean.normalize import REPLACEMENT_CHAR, SURROGATES, normalize_batch
from gpt.data.clean.report import CleanResult, assemble
from gpt.data.clean.scrub import scrub_batch
from gpt.data.minhash import band_keys, lsh_bands, minhash_signatures, near_duplicates_banded
from gpt.data.records import DOC_COLUMNS, WEB_COLUMNS
from gpt.data.shards import (
    PART,
    ShardedOutput,
    is_done,
    mark_done,
    parts,
    read_part,
    sharded_output,
    write_parquet,
)
from gpt.data.workers import ignore_ctrl_c
from gpt.errors import DataError

#: Texts per batch are cut at about this many bytes (numpy temporaries stay in cache).
_BATCH_BYTES = 4 << 20

#: mapper(fn, jobs) -> [fn(job) for job in jobs], possibly on other processes or machines
#: (jobs name files: the workers need the workspace's folder, e.g. on shared storage).
Mapper = Callable[[Callable[[Any], Any], list], list]

#: Rejected documents' shards (kept ones are ``part-NNNNN.parquet``).
REJECTED_PART = "rejected-{:05d}.parquet"
# Per-document decision kinds after dedup.
_KEEP, _QUALITY, _DUP_ID, _DUP_OF, _NEAR_OF, _DUP_URL = range(6)
#: The language filter's columns of the kept documents (``clean.languages`` set).
LANGUAGE_COLUMNS = ("language", "language_score")


@dataclass
class _Part:
    """Per-document results of the filters for one shard (documents in shard order)."""

    cleaned: pa.ChunkedArray  # large_string
    codes: np.ndarray  # QUALITY_REASONS codes
    pii: dict[int, dict[str, int]]  # index in shard -> kind -> count (documents that passed)
    sigs: np.ndarray | None  # signatures of the documents that passed, in order
    columns: dict[str, np.ndarray]  # what the filters measured (LANGUAGE_COLUMNS), per document


def _batches(arr: pa.Array) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``_BATCH_BYTES`` each."""
    offsets = byte_offsets(arr)
    cuts = np.searchsorted(offsets, np.arange(0, offsets[-1], _BATCH_BYTES), "right")
    bounds = sorted({0, len(arr), *(int(c) - 1 for c in cuts if 0 < c - 1 < len(arr))})
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _filter_part(texts: pa.ChunkedArray, cfg: CleanConfig, urls: list[str] | None = None,
                 evals: EvalSets | None = None) -> _Part:
    """Normalise, filter and scrub one shard; sign the survivors when near-dedup is on."""
    pieces: list[pa.Array] = []
    code_parts: list[np.ndarray] = []
    column_parts: dict[str, list[np.ndarray]] = {}
    pii: dict[int, dict[str, int]] = {}
    kinds = tuple(cfg.pii)
    if texts.num_chunks > 1 and texts.nbytes < texts.num_chunks * _BATCH_BYTES:
        texts = pa.chunked_array([texts.combine_chunks()])  # many small chunks: one batch loop
    base = 0
    for chunk in texts.chunks:
        for lo, hi in _batches(chunk):
            arr = normalize_batch(chunk.slice(lo, hi - lo))
            codes, columns = quality_codes(arr, features(arr), cfg, None if urls is None else
                                           urls[base + lo:base + hi], evals)
            for name, values in columns.items():
                column_parts.setdefault(name, []).append(values)
            arr, counts_at = scrub_batch(arr, kinds, np.flatnonzero(codes == 0))
            pii.update({base + lo + i: counts for i, counts in counts_at.items()})
            pieces.append(arr)
            code_parts.append(codes)
        base += len(chunk)
    cleaned = pa.chunked_array(pieces, type=pa.large_string())
    codes = np.concatenate(code_parts) if code_parts else np.zeros(0, dtype=np.int8)
    sigs = None
    if cfg.near_dedup:
        passing = cleaned.filter(pa.array(codes == 0)).to_pylist() if len(cleaned) else []
        sigs = minhash_signatures(passing, cfg.near_dedup_num_perm, cfg.near_dedup_ngram)
    return _Part(cleaned, codes, pii, sigs,
                 {k: np.concatenate(v) for k, v in column_parts.items()})


def hash16(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 16-byte BLAKE2b digest per text, as ``(n, 2)`` ``uint64`` (equal texts, equal rows)."""
    out = bytearray()
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    for chunk in chunks:
        chunk = chunk.cast(pa.large_string())
        data, offs = memoryview(raw_bytes(chunk)), byte_offsets(chunk).tolist()
        for a, b in zip(offs[:-1], offs[1:], strict=True):
            out += hashlib.blake2b(data[a:b], digest_size=16).digest()
    return np.frombuffer(bytes(out), dtype=np.uint64).reshape(-1, 2)


def _first_of(h: np.ndarray) -> np.ndarray:
    """For each row of ``(n, 2)`` hashes, the index of the first row with the same hash."""
    if not len(h):
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((h[:, 1], h[:, 0]))  # stable: equal hashes stay in row order
    sh = h[order]
    new = np.r_[True, (sh[1:] != sh[:-1]).any(axis=1)]
    first = order[new][np.cumsum(new) - 1]
    out = np.empty(len(h), dtype=np.int64)
    out[order] = first
    return out


@dataclass
class _Files:
    """A shard's scratch files (pass 1)."""

    scratch: Path
    stem: str

    def __getitem__(self, what: str) -> Path:
        ext = {"text": "parquet", "meta": "npz"}.get(what, "npy")
        return self.scratch / f"{self.stem}.{what}.{ext}"


def _save_scratch(table: pa.Table, path: Path) -> None:
    """A parquet file only this run reads back (scratch and temp files): uncompressed and
    without a dictionary, several times faster to write and read than ``write_parquet``'s."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="none", use_dictionary=False)
    os.replace(tmp, path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def filter_shard(job: tuple[str, str, str, CleanConfig, EvalSets | None]) -> dict[str, int]:
    """Pass 1 for one shard: filter, scrub, hash and sign it into scratch files.

    Args:
        job: ``(raw shard, scratch folder, shard stem, clean config, evaluation sets)``.

    Returns:
        ``{"docs": n, "passed": m}``.
    """
    raw, scratch, stem, cfg, evals = job
    files = _Files(Path(scratch), stem)
    frame = validated_docs(read_part(Path(raw), "ingest"))
    urls = frame["url"].tolist() if "url" in frame.columns else None
    with system_allocator():
        part = _filter_part(chunked(frame["text"]), cfg, urls, evals)
    passed = part.codes == 0
    cleaned = part.cleaned
    _save_scratch(pa.table({"text": cleaned}), files["text"])
    if cfg.near_dedup:
        sigs = part.sigs if part.sigs is not None else np.zeros((0, cfg.near_dedup_num_perm))
        sigs = sigs.astype(np.uint32)
        _save_npy(files["sig"], np.ascontiguousarray(sigs.T))
        _save_npy(files["bands"], band_keys(sigs, cfg.near_dedup_threshold,
                                            cfg.near_dedup_num_perm))
    pii_rows = np.array(sorted(part.pii), dtype=np.int64)
    kinds = list(cfg.pii)
    pii_counts = np.array([[part.pii[r].get(k, 0) for k in kinds] for r in pii_rows.tolist()],
                          dtype=np.int64).reshape(len(pii_rows), len(kinds))
    text_hash = hash16(cleaned.filter(pa.array(passed))) if len(cleaned) else hash16(
        pa.array([], pa.large_string()))
    tmp = files["meta"].with_name(f".{files['meta'].name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, id_hash=hash16(pa.array(frame["doc_id"], pa.large_string())),
                 codes=part.codes.astype(np.int8), text_hash=text_hash, pii_rows=pii_rows,
                 pii_counts=pii_counts,
                 url_hash=hash16(pa.array(urls or [], pa.large_string())),
                 has_url=np.array([bool(u) for u in urls or []], dtype=bool),
                 language=np.array(part.columns.get("language", []), dtype=str),
                 language_score=part.columns.get("language_score", np.zeros(0)),
                 contaminated=np.array(part.columns.get(CONTAMINATED, []), dtype=str))
    os.replace(tmp, files["meta"])
    mark_done(files["meta"])  # written last: the shard's pass 1 is complete
    return {"docs": len(frame), "passed": int(passed.sum())}


def _run(fn: Callable[[Any], Any], jobs: list, workers: int, mapper: Mapper | None) -> list:
    """Per-shard work: through ``mapper``, a local process pool, or in this process."""
    if not jobs:
        return []
    if mapper is not None:
        return list(mapper(fn, jobs))
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=ignore_ctrl_c) as pool:
            out = pool.map(fn, jobs, chunksize=1)
            pool.close()
            pool.join()
        return out
    return [fn(job) for job in jobs]


class _Corpus:
    """Pass 1's per-document arrays of all shards, concatenated (a few bytes per document)."""

    def __init__(self, files: list[_Files]) -> None:
        self.files = files
        metas = [np.load(f["meta"]) for f in files]
        self.sizes = np.array([len(m["codes"]) for m in metas], dtype=np.int64)
        self.starts = np.r_[0, np.cumsum(self.sizes)]
        self.codes = np.concatenate([m["codes"] for m in metas]) if metas else np.zeros(0, np.int8)
        self.id_hash = np.concatenate([m["id_hash"] for m in metas]).reshape(-1, 2)
        self.text_hash = np.concatenate([m["text_hash"] for m in metas]).reshape(-1, 2)
        self.pii = [(m["pii_rows"], m["pii_counts"]) for m in metas]
        # Per document ("" / False where the source has no url column).
        self.url_hash = np.concatenate(
            [m["url_hash"] if len(m["url_hash"]) else np.zeros((len(m["codes"]), 2), np.uint64)
             for m in metas]).reshape(-1, 2) if metas else np.zeros((0, 2), np.uint64)
        self.has_url = np.concatenate(
            [m["has_url"] if len(m["has_url"]) else np.zeros(len(m["codes"]), bool)
             for m in metas]) if metas else np.zeros(0, bool)
        # Per shard (empty when clean.languages is off).
        self.language = [(m["language"], m["language_score"]) for m in metas]
        # Per shard: the evaluation set of each contaminated document (empty when none).
        self.contaminated = [m["contaminated"] if "contaminated" in m else np.zeros(0, str)
                             for m in metas]

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, rows, "right") - 1


def _dedup(corpus: _Corpus, cfg: CleanConfig) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pass 2: per document its decision kind and target row; duplicates found, rows that passed.
    """
    n = len(corpus.codes)
    kind = np.where(corpus.codes == 0, _KEEP, _QUALITY).astype(np.int8)
    target = np.full(n, -1, dtype=np.int64)
    dup_id = _first_of(corpus.id_hash) != np.arange(n)
    kind[dup_id] = _DUP_ID
    passing = kind == _KEEP
    reached = int(passing.sum())
    code0 = np.flatnonzero(corpus.codes == 0)  # the rows text_hash, signatures and bands cover
    duplicates = 0
    if cfg.exact_dedup and corpus.has_url.any():
        rows = np.flatnonzero(passing & corpus.has_url)
        first = rows[_first_of(corpus.url_hash[rows])]
        copy = first != rows
        kind[rows[copy]] = _DUP_URL
        target[rows[copy]] = first[copy]
        duplicates += int(copy.sum())
    if cfg.exact_dedup:
        sel = kind[code0] == _KEEP
        rows = code0[sel]
        first = rows[_first_of(corpus.text_hash[sel])]
        copy = first != rows
        kind[rows[copy]] = _DUP_OF
        target[rows[copy]] = first[copy]
        duplicates += int(copy.sum())
    if cfg.near_dedup and reached > 1:
        duplicates += _near(corpus, kind, target, code0, cfg)
    # Exact copies of a document that turned out a near duplicate point past it, at the kept one.
    redirect = (kind == _DUP_OF) & (kind[np.maximum(target, 0)] == _NEAR_OF)
    kind[redirect] = _NEAR_OF
    target[redirect] = target[target[redirect]]
    # A URL's first crawl that turned out a copy of another page: point at that page.
    moved = (kind == _DUP_URL) & (kind[np.maximum(target, 0)] != _KEEP)
    target[moved] = target[target[moved]]
    return kind, target, duplicates, reached


def _near(corpus: _Corpus, kind: np.ndarray, target: np.ndarray, code0: np.ndarray,
          cfg: CleanConfig) -> int:
    """Mark near duplicates among the documents still kept, across all shards; how many."""
    alive_c0 = kind[code0] == _KEEP  # per pass-1 survivor (the rows bands/signatures cover)
    alive_rows = code0[alive_c0]
    # Per shard: positions (among its survivors) of the alive rows.
    c0_shard = corpus.shard_of(code0)
    c0_local = np.arange(len(code0)) - np.searchsorted(c0_shard, c0_shard, "left")
    local = [c0_local[(c0_shard == s) & alive_c0] for s in range(len(corpus.files))]
    bands, _ = lsh_bands(cfg.near_dedup_threshold, cfg.near_dedup_num_perm)

    def keys(band: int) -> np.ndarray:
        out = [np.load(f["bands"], mmap_mode="r")[band][loc] for f, loc in
               zip(corpus.files, local, strict=True) if len(loc)]
        return np.concatenate(out) if out else np.zeros(0, np.uint64)

    offsets = np.r_[0, np.cumsum([len(loc) for loc in local])]

    def take(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), cfg.near_dedup_num_perm), dtype=np.uint32)
        shard = np.searchsorted(offsets, rows, "right") - 1
        for s in np.unique(shard).tolist():
            at = shard == s
            sig = np.load(corpus.files[s]["sig"], mmap_mode="r")
            out[at] = sig[:, local[s][rows[at] - offsets[s]]].T
        return out

    of = near_duplicates_banded(keys, bands, len(alive_rows), take, cfg.near_dedup_threshold,
                                cfg.near_dedup_num_perm, _LazyTexts(corpus, alive_rows),
                                cfg.near_dedup_ngram)
    found = np.flatnonzero(of >= 0)
    kind[alive_rows[found]] = _NEAR_OF
    target[alive_rows[found]] = alive_rows[of[found]]
    return len(found)


class _LazyTexts:
    """The cleaned texts of given corpus rows, read from their shard's scratch file when asked
    (only the few pairs near the threshold are)."""

    def __init__(self, corpus: _Corpus, rows: np.ndarray) -> None:
        self.corpus, self.rows = corpus, rows
        self._shard, self._texts = -1, pa.chunked_array([], pa.large_string())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> str:
        row = int(self.rows[i])
        s = int(self.corpus.shard_of(np.array([row]))[0])
        if s != self._shard:
            self._texts = pq.read_table(self.corpus.files[s]["text"]).column("text")
            self._shard = s
        return self._texts[row - int(self.corpus.starts[s])].as_py()


def _reasons(corpus: _Corpus, kind: np.ndarray, target: np.ndarray, ids: dict[int, str],
             s: int) -> np.ndarray:
    """Shard ``s``'s reasons (``""``: kept), duplicate targets named by their doc ids."""
    lo, hi = int(corpus.starts[s]), int(corpus.starts[s + 1])
    k, t = kind[lo:hi], target[lo:hi]
    reasons = np.array(QUALITY_REASONS, dtype=object)[corpus.codes[lo:hi]]
    reasons[k == _KEEP] = ""
    reasons[k == _DUP_ID] = DUPLICATE_ID
    language = corpus.language[s][0]
    for i in np.flatnonzero((k == _QUALITY) & (corpus.codes[lo:hi] == LANGUAGE_CODE)).tolist():
        reasons[i] = f"{LANGUAGE}={language[i]}"
    evalset = corpus.contaminated[s]
    for i in np.flatnonzero((k == _QUALITY)
                            & (corpus.codes[lo:hi] == CONTAMINATED_CODE)).tolist():
        reasons[i] = f"{CONTAMINATED}={evalset[i]}"
    prefixes = {_DUP_OF: DUPLICATE_OF, _NEAR_OF: NEAR_DUPLICATE_OF, _DUP_URL: DUPLICATE_URL_OF}
    dup = np.flatnonzero((k == _DUP_OF) | (k == _NEAR_OF) | (k == _DUP_URL))
    for i in dup.tolist():
        reasons[i] = f"{prefixes[int(k[i])]}={ids[int(t[i])]}"
    return reasons


def _doc_ids(corpus: _Corpus, raw: list[Path], rows: np.ndarray) -> dict[int, str]:
    """Doc ids of corpus rows (read from their raw shards' id column)."""
    out: dict[int, str] = {}
    shards = corpus.shard_of(rows)
    for s in np.unique(shards).tolist():
        ids = pq.read_table(raw[s], columns=["doc_id"]).column("doc_id")
        for r in rows[shards == s].tolist():
            out[r] = ids[r - int(corpus.starts[s])].as_py()
    return out


def _write_shard(corpus: _Corpus, raw: list[Path], s: int, reasons: np.ndarray,
                 cfg: CleanConfig, out: ShardedOutput) -> dict[str, Any]:
    """Pass 3 for shard ``s``: its kept and rejected documents, and its counts."""
    frame = validated_docs(read_part(raw[s], "ingest"))
    cleaned = pq.read_table(corpus.files[s]["text"]).column("text")
    keep = reasons == ""
    pii_rows, pii_counts = corpus.pii[s]
    pii: dict[str, int] = {}
    for j, k in enumerate(cfg.pii):
        c = int(pii_counts[keep[pii_rows], j].sum()) if len(pii_rows) else 0
        if c:
            pii[k] = c
    extra: dict[str, pd.Series] = {}
    language, score = corpus.language[s]
    if cfg.languages and len(language):
        extra = {"language": pd.Series(language[keep], dtype="str"),
                 "language_score": pd.Series(score[keep].round(4), dtype="float64")}
    with system_allocator():
        result = assemble(frame, cleaned.filter(pa.array(keep)), reasons, chunked(frame["text"]),
                          0, 0, pii, tuple(cfg.pii), extra)
    write_parquet(result.rejected, out.path / REJECTED_PART.format(s))
    name = PART.format(s)
    write_parquet(result.kept, out.path / name)
    stats = result.stats
    stats["lengths_in"] = frame["text"].str.len().tolist()
    stats["lengths_out"] = result.kept["text"].str.len().tolist()
    (out.scratch / f"{name}.stats.json").write_text(json.dumps(stats))
    out.complete(name)
    return stats


@dataclass
class CleanedParts:
    """What ``clean_parts`` wrote: merged stats and the document lengths before and after."""

    stats: dict[str, Any]
    lengths_in: np.ndarray
    lengths_out: np.ndarray
    shard_docs: list[int]  # kept documents per shard
    shard_bytes: list[int]  # UTF-8 bytes of each shard's kept texts


def clean_parts(raw: list[Path], out: ShardedOutput, cfg: CleanConfig, workers: int = 1,
                mapper: Mapper | None = None, evals: EvalSets | None = None) -> CleanedParts:
    """Clean raw shards into ``out`` (``part-NNNNN.parquet`` kept, ``rejected-NNNNN.parquet``).

    Shards already completed in ``out`` (a resumed run) are not cleaned again.

    Args:
        raw: the raw shards, in corpus order.
        out: the partial output folder (``gpt.data.shards.sharded_output``).
        cfg: the ``clean`` section of the params.
        workers: processes for pass 1 (1 = this process).
        mapper: runs pass 1 instead of the local pool (e.g. Prefect tasks on Dask).
        evals: the evaluation sets documents are checked against (``decontam.load``).

    Returns:
        The stats over all shards (see ``clean_documents``) and the lengths for the plot.
    """
    files = [_Files(out.scratch, f"f1-{i:05d}") for i in range(len(raw))]
    todo = [(str(r), str(f.scratch), f.stem, cfg, evals) for r, f in
            zip(raw, files, strict=True) if not is_done(f["meta"])]
    _run(filter_shard, todo, workers, mapper)
    corpus = _Corpus(files)
    kind, target, duplicates, reached = _dedup(corpus, cfg)
    # The doc ids duplicates name, read once (not once per shard that points at them).
    ids = _doc_ids(corpus, raw, np.unique(target[target >= 0]))
    shard_stats = []
    for s in range(len(raw)):
        name = PART.format(s)
        if out.done(name):
            shard_stats.append(json.loads((out.scratch / f"{name}.stats.json").read_text()))
            continue
        shard_stats.append(_write_shard(corpus, raw, s, _reasons(corpus, kind, target, ids, s),
                                        cfg, out))
    return _merge(shard_stats, duplicates, reached)


def _merge(shard_stats: list[dict[str, Any]], duplicates: int, reached: int) -> CleanedParts:
    stats: dict[str, Any] = {"docs_in": 0, "docs_kept": 0, "docs_rejected": 0,
                             "rejected_by_reason": {}, "bytes_in": 0, "bytes_out": 0,
                             "dedup_rate": round(duplicates / reached, 6) if reached else 0.0,
                             "pii_replacements": {}}
    lengths_in: list[int] = []
    lengths_out: list[int] = []
    for st in shard_stats:
        for key in ("docs_in", "docs_kept", "docs_rejected", "bytes_in", "bytes_out"):
            stats[key] += st[key]
        for group in ("rejected_by_reason", "pii_replacements", "contaminated_by_eval_set"):
            for k, v in st.get(group, {}).items():
                stats.setdefault(group, {})[k] = stats.get(group, {}).get(k, 0) + v
        lengths_in += st["lengths_in"]
        lengths_out += st["lengths_out"]
    for group in ("rejected_by_reason", "pii_replacements", "contaminated_by_eval_set"):
        if group in stats:
            stats[group] = dict(sorted(stats[group].items()))
    return CleanedParts(stats, np.asarray(lengths_in), np.asarray(lengths_out),
                        [st["docs_kept"] for st in shard_stats],
                        [st["bytes_out"] for st in shard_stats])


def clean_shards(shards: list[pd.DataFrame], cfg: CleanConfig, workers: int,
                 mapper: Mapper | None = None, evals: EvalSets | None = None) -> CleanResult:
    """Clean several shards as one corpus: filters in parallel, dedup across all shards.

    The same engine as the clean stage (``clean_parts``), run through a temp folder. Kept and
    rejected documents come in shard order, then row order. Duplicate ids, exact and near
    duplicates are found across shards.

    Args:
        shards: frames with ``DOC_COLUMNS``.
        cfg: the ``clean`` section of the params.
        workers: processes for the per-shard work; 1 (or one shard) runs in this process.
        mapper: runs the per-shard work instead of the local pool, e.g. as Prefect tasks on a
            Dask cluster (``flows.clean_flow``); it must return results in job order.
        evals: the evaluation sets documents are checked against (``decontam.load``).

    Returns:
        The kept and rejected documents with ``stats`` (see ``clean_documents``).

    Raises:
        DataError: a shard is not a frame with the document columns.
    """
    frames = ([validated_docs(s) for s in shards]
              or [validated_docs(pd.DataFrame(columns=DOC_COLUMNS))])
    with tempfile.TemporaryDirectory(prefix="gptops-clean-") as tmp:
        raw = [Path(tmp) / PART.format(i) for i in range(len(frames))]
        for frame, path in zip(frames, raw, strict=True):
            _save_scratch(pa.Table.from_pandas(frame, preserve_index=False), path)
        final = Path(tmp) / "clean"
        with sharded_output(final, "clean_shards") as out:
            done = clean_parts(raw, out, cfg, workers, mapper, evals)
        kept = pd.concat([read_part(p, "clean") for p in parts(final)], ignore_index=True)
        rejected = pd.concat([read_part(p, "clean") for p in parts(final, "rejected-")],
                             ignore_index=True)
    for frame in (kept, rejected):
        for col in frame.columns:
            if frame[col].dtype.kind != "f":  # language_score stays a number
                frame[col] = frame[col].astype("str")
    return CleanResult(kept=kept, rejected=rejected, stats=done.stats)


def clean_documents(docs: pd.DataFrame, cfg: CleanConfig, evals: EvalSets | None = None
                    ) -> CleanResult:
    """Clean a frame of documents.

    Args:
        docs: a frame with ``DOC_COLUMNS`` (extra columns are ignored).
        cfg: the ``clean`` section of the params.
        evals: the evaluation sets documents are checked against (``decontam.load``).

    Returns:
        The kept and rejected documents and ``stats``: ``docs_in``, ``docs_kept``,
        ``docs_rejected``, ``rejected_by_reason`` (reason without its ``=<id>`` part -> count),
        ``bytes_in`` (UTF-8 bytes of every input text), ``bytes_out`` (of the kept cleaned texts),
        ``dedup_rate`` (exact + near duplicates / documents that passed the filters),
        ``pii_replacements`` (kind -> placeholders written into kept texts),
        ``contaminated_by_eval_set`` (evaluation set -> documents rejected as contaminated).

    Raises:
        DataError: ``docs`` is not a frame with the document columns.
    """
    return clean_shards([docs], cfg, workers=1, evals=evals)


def validated_docs(docs: pd.DataFrame) -> pd.DataFrame:
    """Check the document schema; return a copy with string columns and no missing values
    (the ``WEB_COLUMNS`` kept when present)."""
    if not isinstance(docs, pd.DataFrame):
        raise DataError(f"documents must be a pandas DataFrame with columns {DOC_COLUMNS}, got "
                        f"{type(docs).__name__}")
    missing = [c for c in DOC_COLUMNS if c not in docs.columns]
    if missing:
        raise DataError(f"documents lack column(s) {missing} (have {list(map(str, docs.columns))});"
                        " read them with gpt.data.sources")
    out: dict[str, pd.Series] = {}
    columns = DOC_COLUMNS + [c for c in WEB_COLUMNS if c in docs.columns]
    for col in columns:
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
    return pd.DataFrame(out, columns=columns)


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
