"""What cleaning produced: the kept and rejected frames, their stats, and the markdown report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gpt.data.clean.arrow import str_series, utf8_bytes
from gpt.data.clean.scrub import scrub_batch
from gpt.data.records import DOC_COLUMNS, WEB_COLUMNS

REJECTED_COLUMNS = ["doc_id", "source", "name", "reason", "excerpt"]
EXCERPT_CHARS = 200


@dataclass
class CleanResult:
    """What cleaning produced.

    Attributes:
        kept: ``DOC_COLUMNS`` frame of kept documents, ``text`` cleaned, in input order (with
            the ``WEB_COLUMNS`` of web sources, and ``language``/``language_score`` when
            ``clean.languages`` is set).
        rejected: ``REJECTED_COLUMNS`` frame (``excerpt`` = the first 200 characters of the
            original text, PII replaced), in input order.
        stats: JSON-serialisable counts (see ``clean_documents``).
    """

    kept: pd.DataFrame
    rejected: pd.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


#: Characters past the excerpt scrubbed with it, so PII cut by the excerpt's end is whole when
#: its pattern runs (an e-mail address or key longer than this could still leave a prefix).
_EXCERPT_MARGIN = 256


def scrubbed_excerpts(texts: pa.ChunkedArray, kinds: tuple[str, ...]) -> pd.Series:
    """The first ``EXCERPT_CHARS`` characters of each text, with PII replaced by placeholders.

    Rejected documents are written to ``rejected.parquet`` (DVC-tracked, pushed), so their
    excerpts are scrubbed like kept texts.
    """
    head = pc.utf8_slice_codeunits(texts, 0, EXCERPT_CHARS + _EXCERPT_MARGIN)
    arr = head.combine_chunks() if isinstance(head, pa.ChunkedArray) else head
    arr = arr.cast(pa.large_string())
    if kinds and len(arr):
        arr, _ = scrub_batch(arr, kinds, np.arange(len(arr)))
    return str_series(pc.utf8_slice_codeunits(arr, 0, EXCERPT_CHARS))


def assemble(frame: pd.DataFrame, kept_texts: pa.ChunkedArray, reasons: np.ndarray,
             originals: pa.ChunkedArray, reached_dedup: int, duplicates: int,
             pii: dict[str, int], pii_kinds: tuple[str, ...] = (),
             kept_columns: dict[str, pd.Series] | None = None) -> CleanResult:
    """The result frames and stats from the per-document reasons.

    Args:
        frame: the validated input documents (all shards, in order).
        kept_texts: the cleaned texts of the kept documents, in order.
        reasons: per document, its reason (``""``: kept).
        originals: the input texts.
        reached_dedup: documents that passed the filters.
        duplicates: exact and near duplicates found among them.
        pii: kind -> placeholders written into kept texts.
        pii_kinds: the PII kinds scrubbed (``CleanConfig.pii``), also out of the excerpts.
        kept_columns: more columns of the kept documents (e.g. ``language``), in order.

    Returns:
        The kept and rejected documents with ``stats`` (see ``clean_documents``).
    """
    keep = reasons == ""
    ids = ["doc_id", "source", "name"]
    web = [c for c in WEB_COLUMNS if c in frame.columns]
    kept = frame.loc[keep, ids + web].reset_index(drop=True)
    kept["text"] = str_series(kept_texts)
    kept = kept[DOC_COLUMNS + web]
    if "url" in kept.columns and pii_kinds and len(kept):
        # A URL can carry an e-mail address or a key in its query: scrubbed like the texts
        # (the URL filters and URL dedup judged the URLs as crawled).
        urls = pa.array(kept["url"].tolist(), pa.large_string())
        kept["url"] = str_series(scrub_batch(urls, pii_kinds, np.arange(len(urls)))[0])
    for name, column in (kept_columns or {}).items():
        kept[name] = column.reset_index(drop=True)
    rejected = frame.loc[~keep, ids].reset_index(drop=True)
    rejected["reason"] = pd.Series(reasons[~keep].tolist(), dtype="str")
    rejected["excerpt"] = scrubbed_excerpts(originals.filter(pa.array(~keep)), pii_kinds)
    by_reason: dict[str, int] = {}
    by_eval_set: dict[str, int] = {}
    for r in rejected["reason"].tolist():
        key, _, detail = r.partition("=")
        by_reason[key] = by_reason.get(key, 0) + 1
        if key == "contaminated":
            by_eval_set[detail] = by_eval_set.get(detail, 0) + 1
    stats = {
        "docs_in": len(frame),
        "docs_kept": len(kept),
        "docs_rejected": len(rejected),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "bytes_in": utf8_bytes(originals),
        "bytes_out": utf8_bytes(kept_texts),
        "dedup_rate": round(duplicates / reached_dedup, 6) if reached_dedup else 0.0,
        "pii_replacements": dict(sorted(pii.items())),
    }
    if by_eval_set:
        stats["contaminated_by_eval_set"] = dict(sorted(by_eval_set.items()))
    return CleanResult(kept=kept, rejected=rejected, stats=stats)


def render_report(stats: dict[str, Any]) -> str:
    """Render cleaning stats as a short markdown report.

    Args:
        stats: ``CleanResult.stats``.

    Returns:
        Markdown with document and byte counts, the dedup rate, a table of rejections per reason,
        one of contaminated documents per evaluation set (if any) and one of PII replacements.
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
    evalsets = stats.get("contaminated_by_eval_set", {}) or {}
    if evalsets:
        lines += ["", "| evaluation set | contaminated documents |", "|---|---:|"]
        lines += [f"| {name} | {count:,} |" for name, count in sorted(evalsets.items())]
    skipped = stats.get("skipped_records", {}) or {}
    if skipped:
        lines += ["", "| skipped record (not a document) | records |", "|---|---:|"]
        lines += [f"| {kind} | {count:,} |" for kind, count in sorted(skipped.items())]
    pii = stats.get("pii_replacements", {}) or {}
    lines += ["", "| PII placeholder | replacements |", "|---|---:|"]
    for kind, count in sorted(pii.items()):
        lines.append(f"| {kind} | {count:,} |")
    if not pii:
        lines.append("| (none) | 0 |")
    return "\n".join(lines) + "\n"
