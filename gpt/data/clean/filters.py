"""Why a document is rejected: the one table of reasons, in the order they are checked.

Each row of ``REASONS`` names a reason, the ``clean:`` parameters (``CleanConfig`` fields) it
reads, what it means, and, for the quality filters, the vectorised test over a batch. The first
reason that applies to a document wins. Everything else reads this table: the engine's reason
codes (``QUALITY_REASONS``), the docs' list (docs/data.md, ``reasons_markdown``; a unit test keeps
them equal), the ``params.yaml`` comments (checked by the same test) and the tests.

The quality filters follow Gopher (Rae et al. 2021) and FineWeb; language identification is
FineWeb's (fastText lid.176), run last so it judges only the texts every cheaper filter kept.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from gpt.config import CleanConfig
from gpt.data.clean.arrow import pick
from gpt.data.clean.features import Features, repeated_line_fraction
from gpt.data.clean.language import identify
from gpt.data.clean.urls import blocked


@dataclass
class Batch:
    """What a quality filter judges: a batch of normalised texts and their counts.

    Attributes:
        arr: the texts (``large_string``).
        f: their ``Features``.
        pending: per text, whether no earlier filter has rejected it. A costly filter may
            judge only these rows: its answer for the others is not used.
        urls: the documents' URLs ("" for none; ``None``: the source has no ``url`` column).
        columns: per-text values a filter measured, kept as columns of the kept documents
            (``language``, ``language_score``).
    """

    arr: pa.Array
    f: Features
    pending: np.ndarray
    urls: list[str] | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)


#: ``rejects(batch, cfg)``: per text of the batch, whether the filter rejects it.
Predicate = Callable[[Batch, CleanConfig], np.ndarray]


@dataclass(frozen=True)
class Reason:
    """One row of the table.

    Attributes:
        name: the reason as written in ``rejected.parquet`` and the stats.
        params: the ``clean:`` keys (``CleanConfig`` fields) that decide it.
        description: when it applies, in a few words that name each of ``params`` in
            backticks (docs/data.md shows it).
        rejects: the quality filter; ``None`` for the reasons found across the corpus
            (duplicate ids, exact and near duplicates).
        points_at: the reason is written ``<name>=<id>``, naming the kept document.
        detail: the reason is written ``<name>=<detail>`` (e.g. ``language=<code>``); the
            filter leaves the detail in ``Batch.columns[name]``.
    """

    name: str
    params: tuple[str, ...]
    description: str
    rejects: Predicate | None = None
    points_at: bool = False
    detail: str = ""

    @property
    def label(self) -> str:
        """The reason as it appears in ``rejected.parquet`` (``<id>`` for the document id)."""
        return f"{self.name}=<id>" if self.points_at else (
            f"{self.name}={self.detail}" if self.detail else self.name)


def _mean_word_length(b: Batch) -> np.ndarray:
    return b.f.word_chars / np.maximum(b.f.words, 1)


def _repeated_lines(b: Batch, cfg: CleanConfig) -> np.ndarray:
    """Only texts still pending with more than one line are split into lines (the costly part)."""
    hit = np.zeros(len(b.arr), dtype=bool)
    multi = np.flatnonzero(b.pending & (b.f.lines > 1))
    if len(multi):
        repeated = repeated_line_fraction(pick(b.arr, multi), b.f.lines[multi])
        hit[multi[repeated > cfg.max_dup_line_fraction]] = True
    return hit


def _url_blocked(b: Batch, cfg: CleanConfig) -> np.ndarray:
    if not cfg.url_blocklist or b.urls is None:
        return np.zeros(len(b.arr), dtype=bool)
    return blocked(b.urls, tuple(cfg.url_blocklist))


def _language(b: Batch, cfg: CleanConfig) -> np.ndarray:
    """fastText lid.176 on the texts still pending only (it is the costliest filter)."""
    hit = np.zeros(len(b.arr), dtype=bool)
    if not cfg.languages:
        return hit
    rows = np.flatnonzero(b.pending)
    codes = np.full(len(b.arr), "", dtype=object)
    scores = np.full(len(b.arr), np.nan)
    if len(rows):
        codes[rows], scores[rows] = identify(pick(b.arr, rows))
        hit[rows] = ~np.isin(codes[rows], list(cfg.languages)) | \
            (scores[rows] < cfg.min_language_score)
    b.columns["language"], b.columns["language_score"] = codes, scores
    return hit


#: Every reason, in the order they are checked. Descriptions name their params in backticks.
REASONS: tuple[Reason, ...] = (
    Reason("duplicate_id", (), "an earlier document has the same `doc_id`"),
    Reason("url_blocked", ("url_blocklist",),
           "the URL's host is (under) a domain of the `url_blocklist` files, or the URL has a "
           "word they ban (`word:<word>` lines)", _url_blocked),
    Reason("invalid_utf8", ("max_invalid_ratio",),
           "more than `max_invalid_ratio` of the characters are U+FFFD (undecodable bytes)",
           lambda b, c: b.f.invalid / np.maximum(b.f.chars, 1) > c.max_invalid_ratio),
    Reason("too_short", ("min_chars",), "fewer than `min_chars` characters",
           lambda b, c: b.f.chars < c.min_chars),
    Reason("too_long", ("max_chars",), "more than `max_chars` characters",
           lambda b, c: b.f.chars > c.max_chars),
    Reason("too_few_words", ("min_words",), "fewer than `min_words` words, or none",
           lambda b, c: (b.f.words < c.min_words) | (b.f.words == 0)),
    Reason("too_many_words", ("max_words",), "more than `max_words` words",
           lambda b, c: b.f.words > c.max_words),
    Reason("word_length", ("min_mean_word_length", "max_mean_word_length"),
           "mean word length below `min_mean_word_length` or above `max_mean_word_length`",
           lambda b, c: (_mean_word_length(b) < c.min_mean_word_length)
           | (_mean_word_length(b) > c.max_mean_word_length)),
    Reason("symbol_ratio", ("max_symbol_ratio",),
           "more than `max_symbol_ratio` symbols (`#`, `...`, `…`) per word",
           lambda b, c: b.f.symbols / np.maximum(b.f.words, 1) > c.max_symbol_ratio),
    Reason("low_alpha", ("min_alpha_ratio",),
           "less than `min_alpha_ratio` of the non-whitespace characters are letters",
           lambda b, c: b.f.letters / np.maximum(b.f.word_chars, 1) < c.min_alpha_ratio),
    Reason("line_punctuation", ("min_punct_line_fraction",),
           "less than `min_punct_line_fraction` of the non-empty lines end in punctuation",
           lambda b, c: b.f.punct_lines / np.maximum(b.f.lines, 1) < c.min_punct_line_fraction),
    Reason("repeated_lines", ("max_dup_line_fraction",),
           "more than `max_dup_line_fraction` of the non-empty lines repeat an earlier line",
           _repeated_lines),
    Reason("language", ("languages", "min_language_score"),
           "fastText's lid.176 names a language `<code>` not in `languages`, or one in it with a "
           "probability below `min_language_score` (if `languages` is set)", _language,
           detail="<code>"),
    Reason("duplicate_url_of", ("exact_dedup",),
           "the same URL as the kept document `<id>`, among the documents that passed the "
           "filters above (if `exact_dedup`)", points_at=True),
    Reason("duplicate_of", ("exact_dedup",),
           "the same cleaned text as the kept document `<id>` (if `exact_dedup`)",
           points_at=True),
    Reason("near_duplicate_of",
           ("near_dedup", "near_dedup_threshold", "near_dedup_num_perm", "near_dedup_ngram"),
           "word-shingle (`near_dedup_ngram` words) Jaccard similarity of at least "
           "`near_dedup_threshold` with the kept document `<id>`, found with "
           "`near_dedup_num_perm` MinHash permutations and LSH (if `near_dedup`)",
           points_at=True),
)

BY_NAME: dict[str, Reason] = {r.name: r for r in REASONS}
#: The quality filters, in order; a document's quality code is its index here plus one.
QUALITY_FILTERS: tuple[Reason, ...] = tuple(r for r in REASONS if r.rejects is not None)
#: Quality reasons by code (0 = passed), in the order they are checked.
QUALITY_REASONS: tuple[str, ...] = ("", *(r.name for r in QUALITY_FILTERS))
DUPLICATE_ID = BY_NAME["duplicate_id"].name
DUPLICATE_OF = BY_NAME["duplicate_of"].name
DUPLICATE_URL_OF = BY_NAME["duplicate_url_of"].name
LANGUAGE = BY_NAME["language"].name
#: The quality code of the language filter (its reason carries the language code).
LANGUAGE_CODE = QUALITY_REASONS.index(LANGUAGE)
NEAR_DUPLICATE_OF = BY_NAME["near_duplicate_of"].name


def quality_codes(arr: pa.Array, f: Features, cfg: CleanConfig,
                  urls: list[str] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The first quality filter each (normalised) text fails, as a ``QUALITY_REASONS`` code.

    Args:
        arr: normalised texts.
        f: their ``features``.
        cfg: the ``clean`` section of the params.
        urls: the documents' URLs (``None`` when the source has none).

    Returns:
        ``int8`` codes, 0 for the texts that pass every filter, and the columns the filters
        measured (``Batch.columns``; e.g. ``language``: the code of each text judged, "" else).
    """
    codes = np.zeros(len(arr), dtype=np.int8)
    batch = Batch(arr, f, np.ones(len(arr), dtype=bool), urls)
    with np.errstate(divide="ignore", invalid="ignore"):
        for code, reason in enumerate(QUALITY_FILTERS, start=1):
            assert reason.rejects is not None
            hit = reason.rejects(batch, cfg) & batch.pending
            codes[hit] = code
            batch.pending &= ~hit
    return codes, batch.columns


def reasons_markdown(width: int = 100) -> str:
    """The table as docs/data.md's markdown list: one item per reason, in checking order.

    Args:
        width: lines are wrapped at this many characters (continuations indented by two).

    Returns:
        The list, ending in a newline.
    """
    items = [textwrap.fill(f"- `{r.label}`: {r.description}", width, subsequent_indent="  ",
                           break_long_words=False, break_on_hyphens=False) for r in REASONS]
    return "\n".join(items) + "\n"
