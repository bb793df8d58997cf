"""Cleaning: Unicode repair, quality filters, dedup and PII scrubbing over document frames.

Every input document comes out exactly once: either in ``kept`` (with its cleaned text) or in
``rejected`` with a reason. The reasons, the ``clean:`` parameters each reads and the order they
are checked in (the first that applies wins) are one table, ``filters.REASONS``. Results are
deterministic: the same input gives the same output, and kept documents stay in input order.

The work is columnar: a shard's texts are one Arrow string array, normalised with Arrow's
compute kernels (RE2 regexes, NFC) and measured with numpy over the UTF-8 bytes of the whole
batch (per-document counts are segment sums), so the per-document Python cost is gone. Only PII
candidates (rows where a cheap, vectorised pre-filter finds something a PII pattern could
match) go through Python.

Modules: ``normalize`` (Unicode and whitespace), ``features`` (the per-byte counts the cheapest
filters judge), ``lines`` (lines, paragraphs and C4's line checks), ``words`` (spaCy's English
tokens, as FineWeb's rules count words; ``fineweb.json`` holds spaCy's and datatrove's tables),
``repetition`` (Gopher's n-gram repetition), ``decontam`` (evaluation sets' n-grams), ``filters``
(the table of reasons), ``scrub`` (PII), ``engine`` (shards, workers, exact and MinHash dedup
across shards, ``clean_parts``/``clean_shards``), ``report`` (result frames, stats, markdown
report), and ``arrow`` (the byte-level helpers they share).
"""

from __future__ import annotations

from gpt.data.clean.engine import Mapper, clean_documents, clean_parts, clean_shards
from gpt.data.clean.features import Features, features
from gpt.data.clean.filters import QUALITY_REASONS, REASONS, Reason, reasons_markdown
from gpt.data.clean.normalize import REPLACEMENT_CHAR, normalize_batch, normalize_text
from gpt.data.clean.report import EXCERPT_CHARS, REJECTED_COLUMNS, CleanResult, render_report

#: The old private name of ``features`` (the property tests use it).
_features = features

__all__ = [
    "EXCERPT_CHARS",
    "QUALITY_REASONS",
    "REASONS",
    "REJECTED_COLUMNS",
    "REPLACEMENT_CHAR",
    "CleanResult",
    "Features",
    "Mapper",
    "Reason",
    "clean_documents",
    "clean_parts",
    "clean_shards",
    "features",
    "normalize_batch",
    "normalize_text",
    "reasons_markdown",
    "render_report",
]
