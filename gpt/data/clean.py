"""Cleaning: Unicode repair, quality filters, dedup and PII scrubbing over document frames.

Every input document comes out exactly once: either in ``kept`` (with its cleaned text) or in
``rejected`` with a reason. Reasons, checked in this order (the first that applies wins):

``duplicate_id``, ``invalid_utf8``, ``too_short``, ``too_long``, ``too_few_words``,
``too_many_words``, ``word_length``, ``symbol_ratio``, ``low_alpha``, ``line_punctuation``,
``repeated_lines``, ``duplicate_of=<id>``, ``near_duplicate_of=<id>``.

The quality filters follow Gopher (Rae et al. 2021) and FineWeb, with thresholds from the
``clean:`` section of ``params.yaml``. Results are deterministic: the same input gives the same
output, and kept documents stay in input order.
"""

from __future__ import annotations

import multiprocessing
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from gpt.config import CleanConfig
from gpt.data.minhash import minhash_signatures, near_duplicates
from gpt.data.pii import scrub_pii
from gpt.data.sources import DOC_COLUMNS
from gpt.errors import DataError

REJECTED_COLUMNS = ["doc_id", "source", "name", "reason", "excerpt"]
EXCERPT_CHARS = 200

# --- Unicode normalisation ----------------------------------------------------------------------

# Line separators other than "\n" and "\r" (CR and CRLF are replaced first, with str.replace).
_NEWLINES = re.compile("[\x0b\x0c\x85\u2028\u2029]")
# C0/C1 controls except \t and \n, DEL, zero-width space, BOM/ZWNBSP.
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u200b\ufeff]")
# Lone surrogates cannot be encoded as UTF-8: they become U+FFFD (so invalid_utf8 sees them).
_SURROGATES = re.compile("[\ud800-\udfff]")
# Unicode spaces that are not ASCII space (NBSP, en/em spaces, ideographic space ...).
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
# Runs of spaces after a non-space (leading indentation is kept: code blocks depend on it).
# Written to start with a literal space so the regex engine can skip ahead quickly.
_SPACE_RUNS = re.compile(r" (?<=\S.) +")
_TRAILING_WS = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile("\n\n\n+")

REPLACEMENT_CHAR = "\ufffd"


def normalize_text(text: str) -> str:
    """Repair and normalise one document's text.

    Strips the BOM and zero-width spaces, turns every newline variant into ``\\n``, removes
    control characters other than ``\\n`` and ``\\t``, turns lone surrogates into U+FFFD and
    Unicode spaces into ASCII spaces, applies NFC, collapses runs of spaces inside lines (not
    indentation), drops trailing whitespace and more than one blank line in a row, and strips
    the ends.

    One document at a time on purpose: cheap substring tests skip most steps for most
    documents (joining a shard and running each regex once was measured slower: one non-ASCII
    document makes every step run over the whole batch).

    Args:
        text: the raw text.

    Returns:
        The cleaned text.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    ascii_only = text.isascii()
    if not ascii_only:
        text = _SURROGATES.sub(REPLACEMENT_CHAR, text)
        text = _ODD_SPACES.sub(" ", text)
    if not ascii_only or "\x0b" in text or "\x0c" in text:
        text = _NEWLINES.sub("\n", text)
    text = _CONTROLS.sub("", text)
    # After control removal, so a removed control cannot leave a decomposed pair behind.
    if not ascii_only and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return _normalize_spaces(text)


def _normalize_spaces(text: str) -> str:
    if "  " in text:
        text = _SPACE_RUNS.sub(" ", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING_WS.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


# --- Quality features ---------------------------------------------------------------------------

_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
# bytes.translate table classing UTF-8 bytes: ASCII letter -> "a", whitespace -> " ", other -> "x".
_CLASS_TABLE = bytes(0x61 if chr(i).isascii() and chr(i).isalpha() else
                     0x20 if chr(i) in " \t\n\r\x0b\x0c" else 0x78 for i in range(256))
_PUNCT_END = tuple(".!?:;\"')]}>…”’»")


def _words_and_letters(text: str) -> tuple[int, int]:
    """Number of whitespace-separated words and of letters (``str.isalpha``) in ``text``.

    Counted on the UTF-8 bytes mapped to three classes, with ``bytes.count``: no word objects
    are built (``str.split`` was the slowest step of the filters).
    """
    classes = text.encode("utf-8", "surrogatepass").translate(_CLASS_TABLE)
    words = classes.count(b" a") + classes.count(b" x") + (classes[:1] not in (b"", b" "))
    letters = classes.count(b"a")
    if not text.isascii():
        letters += sum(sum(map(str.isalpha, run)) for run in _NON_ASCII.findall(text))
    return words, letters


def _quality_reason(text: str, cfg: CleanConfig) -> str | None:
    """The first quality filter ``text`` (already normalised) fails, or None."""
    n_chars = len(text)
    if n_chars < cfg.min_chars:
        return "too_short"
    if n_chars > cfg.max_chars:
        return "too_long"
    n_words, letters = _words_and_letters(text)
    if n_words < cfg.min_words or n_words == 0:
        return "too_few_words"
    if n_words > cfg.max_words:
        return "too_many_words"
    # Normalised text has no whitespace but " ", "\n" and "\t", so str.count is enough.
    word_chars = n_chars - text.count(" ") - text.count("\n") - text.count("\t")
    mean_len = word_chars / n_words
    if not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
        return "word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n_words > cfg.max_symbol_ratio:
        return "symbol_ratio"
    if letters / word_chars < cfg.min_alpha_ratio:
        return "low_alpha"
    if "\n" not in text:  # one line: nothing can repeat
        if cfg.min_punct_line_fraction > 0 and not text.endswith(_PUNCT_END):
            return "line_punctuation"
        return None
    # No trailing whitespace either: a blank line is "", and lines compare as they are.
    lines = text.split("\n")
    n_lines = len(lines) - lines.count("")
    if cfg.min_punct_line_fraction > 0:
        ending = sum(map(str.endswith, lines, repeat(_PUNCT_END, len(lines))))
        if ending / n_lines < cfg.min_punct_line_fraction:
            return "line_punctuation"
    if n_lines > 1:
        distinct = set(lines)
        distinct.discard("")
        if (n_lines - len(distinct)) / n_lines > cfg.max_dup_line_fraction:
            return "repeated_lines"
    return None


# --- Public API ---------------------------------------------------------------------------------


@dataclass
class CleanResult:
    """What cleaning produced.

    Attributes:
        kept: ``DOC_COLUMNS`` frame of kept documents, ``text`` cleaned, in input order.
        rejected: ``REJECTED_COLUMNS`` frame (``excerpt`` = the first 200 characters of the
            original text), in input order.
        stats: JSON-serialisable counts (see ``clean_documents``).
    """

    kept: pd.DataFrame
    rejected: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


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
        out[col] = pd.Series([v if v.isascii() or not _SURROGATES.search(v)
                              else _SURROGATES.sub(REPLACEMENT_CHAR, v) for v in values],
                             dtype="str")
    return pd.DataFrame(out, columns=DOC_COLUMNS)


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _utf8_bytes(texts: pd.Series) -> int:
    """Total UTF-8 size of a string column (Arrow computes it without Python objects)."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc

        return int(pc.sum(pc.binary_length(pa.array(texts))).as_py() or 0)
    except (ImportError, TypeError, ValueError, pa.ArrowException):
        return sum(map(_utf8_len, texts.tolist()))


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@dataclass
class _Part:
    """Per-document results of the filters for one shard (documents in shard order)."""

    cleaned: list[str]
    reasons: list[str | None]
    pii: dict[int, dict[str, int]]  # index in shard -> kind -> count (documents that passed)
    sigs: np.ndarray | None  # signatures of the documents that passed, in order


def _filter_part(texts: list[str], cfg: CleanConfig) -> _Part:
    """Normalise, filter and scrub one shard; sign the survivors when near-dedup is on."""
    cleaned: list[str] = []
    reasons: list[str | None] = []
    pii: dict[int, dict[str, int]] = {}
    kinds = tuple(cfg.pii)
    for i, raw in enumerate(texts):
        text = normalize_text(raw)
        if not text.isascii() and text.count(REPLACEMENT_CHAR) / len(text) > \
                cfg.max_invalid_ratio:
            reason: str | None = "invalid_utf8"
        else:
            reason = _quality_reason(text, cfg)
        if reason is None and kinds:
            text, counts = scrub_pii(text, kinds)
            if counts:
                pii[i] = counts
        cleaned.append(text)
        reasons.append(reason)
    sigs = None
    if cfg.near_dedup:
        passing = [t for t, r in zip(cleaned, reasons, strict=True) if r is None]
        sigs = minhash_signatures(passing, cfg.near_dedup_num_perm, cfg.near_dedup_ngram)
    return _Part(cleaned, reasons, pii, sigs)


def _filter_part_star(args: tuple[list[str], CleanConfig]) -> _Part:
    return _filter_part(*args)


#: mapper(fn, jobs) -> [fn(job) for job in jobs], possibly on other processes or machines.
Mapper = Callable[[Callable[[tuple[list[str], CleanConfig]], Any], list], list]


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
    frames = [_validated(s) for s in shards]
    frame = (pd.concat(frames, ignore_index=True) if frames
             else _validated(pd.DataFrame(columns=DOC_COLUMNS)))
    n = len(frame)
    ids = frame["doc_id"].tolist()
    originals = frame["text"].tolist()
    reasons: list[str | None] = [None] * n
    cleaned: list[str] = [""] * n
    dup_id = frame["doc_id"].duplicated().to_numpy()
    for i in np.flatnonzero(dup_id):
        reasons[i] = "duplicate_id"
    # Work units: each shard minus its duplicate-id rows, as positions into ``frame``.
    bounds = np.cumsum([0] + [len(f) for f in frames])
    units = [np.flatnonzero(~dup_id[lo:hi]) + lo for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                    strict=True)]
    units = [u for u in units if len(u)]
    jobs = [([originals[i] for i in u], cfg) for u in units]
    if mapper is not None:
        parts = list(mapper(_filter_part_star, jobs))
    elif workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs))) as pool:
            parts = pool.map(_filter_part_star, jobs, chunksize=1)
            pool.close()
            pool.join()
    else:
        parts = [_filter_part(*job) for job in jobs]

    pii_at: dict[int, dict[str, int]] = {}
    sig_rows: list[np.ndarray] = []
    for unit, part in zip(units, parts, strict=True):
        for k, pos in enumerate(unit.tolist()):
            cleaned[pos] = part.cleaned[k]
            reasons[pos] = part.reasons[k]
        pii_at.update({int(unit[k]): c for k, c in part.pii.items()})
        if part.sigs is not None:
            sig_rows.append(part.sigs)
    passing = [i for i in range(n) if reasons[i] is None]
    reached_dedup = len(passing)
    duplicates = 0
    copies: dict[int, list[int]] = {}  # first kept -> its exact duplicates
    if cfg.exact_dedup:
        first_of: dict[str, int] = {}
        for i in passing:
            first = first_of.setdefault(cleaned[i], i)
            if first != i:
                reasons[i] = f"duplicate_of={ids[first]}"
                copies.setdefault(first, []).append(i)
                duplicates += 1
    if cfg.near_dedup and passing:
        sigs = np.concatenate(sig_rows) if sig_rows else np.empty((0, cfg.near_dedup_num_perm))
        alive = np.array([reasons[i] is None for i in passing], dtype=bool)
        rows = np.asarray(passing, dtype=np.int64)[alive]
        of = near_duplicates(sigs[alive], cfg.near_dedup_threshold,
                             [cleaned[i] for i in rows.tolist()], cfg.near_dedup_ngram)
        for j in np.flatnonzero(of >= 0).tolist():
            reason = f"near_duplicate_of={ids[rows[of[j]]]}"
            reasons[rows[j]] = reason
            duplicates += 1
            # Exact copies of a document that turned out a near duplicate point past it, at
            # the kept one.
            for copy in copies.get(int(rows[j]), ()):
                reasons[copy] = reason
    pii: dict[str, int] = {}
    for i, counts in pii_at.items():
        if reasons[i] is None:
            for kind, c in counts.items():
                pii[kind] = pii.get(kind, 0) + c
    return _assemble(frame, cleaned, reasons, originals, reached_dedup, duplicates, pii)


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


def _assemble(frame: pd.DataFrame, cleaned: list[str], reasons: list[str | None],
              originals: list[str], reached_dedup: int, duplicates: int,
              pii: dict[str, int]) -> CleanResult:
    keep = np.array([r is None for r in reasons], dtype=bool)
    kept = frame.loc[keep, DOC_COLUMNS].copy()
    kept["text"] = pd.Series([t for t, k in zip(cleaned, keep, strict=True) if k],
                             index=kept.index, dtype="str")
    kept = kept.reset_index(drop=True)
    rej_idx = np.flatnonzero(~keep)
    rejected = frame.loc[~keep, ["doc_id", "source", "name"]].reset_index(drop=True)
    rejected["reason"] = pd.Series([reasons[i] for i in rej_idx], dtype="str")
    rejected["excerpt"] = pd.Series([originals[i][:EXCERPT_CHARS] for i in rej_idx], dtype="str")
    by_reason: dict[str, int] = {}
    for r in rejected["reason"]:
        key = r.split("=", 1)[0]
        by_reason[key] = by_reason.get(key, 0) + 1
    stats = {
        "docs_in": len(frame),
        "docs_kept": len(kept),
        "docs_rejected": len(rejected),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "bytes_in": _utf8_bytes(frame["text"]),
        "bytes_out": _utf8_bytes(kept["text"]),
        "dedup_rate": round(duplicates / reached_dedup, 6) if reached_dedup else 0.0,
        "pii_replacements": dict(sorted(pii.items())),
    }
    return CleanResult(kept=kept, rejected=rejected, stats=stats)


def render_report(stats: dict[str, Any]) -> str:
    """Render cleaning stats as a short markdown report.

    Args:
        stats: ``CleanResult.stats``.

    Returns:
        Markdown with document and byte counts, the dedup rate, a table of rejections per reason
        and a table of PII replacements.
    """
    docs_in = stats.get("docs_in", 0) or 0
    kept = stats.get("docs_kept", 0) or 0
    b_in = stats.get("bytes_in", 0) or 0
    b_out = stats.get("bytes_out", 0) or 0

    def pct(part: float, whole: float) -> str:
        return f"{100 * part / whole:.1f}%" if whole else "n/a"

    lines = [
        "# Cleaning report",
        "",
        f"- documents: {docs_in:,} in, {kept:,} kept ({pct(kept, docs_in)}), "
        f"{stats.get('docs_rejected', 0):,} rejected",
        f"- bytes: {b_in:,} in, {b_out:,} out ({pct(b_out, b_in)})",
        f"- dedup rate: {100 * float(stats.get('dedup_rate', 0.0)):.2f}% of documents that "
        "passed the filters",
        "",
        "| reason | documents | share of input |",
        "|---|---:|---:|",
    ]
    by_reason = stats.get("rejected_by_reason", {}) or {}
    for reason, count in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {reason} | {count:,} | {pct(count, docs_in)} |")
    if not by_reason:
        lines.append("| (none) | 0 | 0.0% |")
    pii = stats.get("pii_replacements", {}) or {}
    lines += ["", "| PII placeholder | replacements |", "|---|---:|"]
    for kind, count in sorted(pii.items()):
        lines.append(f"| {kind} | {count:,} |")
    if not pii:
        lines.append("| (none) | 0 |")
    return "\n".join(lines) + "\n"
