"""The lines and paragraphs of a batch, and what the line-based rules count over them.

``Lines`` splits the texts still being judged into lines once (Arrow) and answers, per text:
Gopher's duplicate lines and paragraphs (and their characters), FineWeb's short lines and
duplicate-line characters, Gopher's bullet and ellipsis lines, and C4's line checks (which lines
count: enough words, no overlong word, no "javascript", no policy phrase; "lorem ipsum" and
curly brackets in them). Texts are normalised: "\\n" is the only line break, no line ends in
whitespace, no text starts or ends with whitespace, and blank lines come one at a time.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gpt.data.clean.arrow import pick
from gpt.data.clean.words import (
    PUNCT,
    SENTENCE_END,
    TABLES,
    Bounds,
    Chunks,
    Words,
    bounds,
    chunks,
    token_flags,
    tokenize,
    words,
)

#: C4's policy/cookie phrases (a line with one does not count).
POLICY_PHRASES: tuple[str, ...] = tuple(TABLES["policy_phrases"])
_POLICY_RE2 = "(?i)" + "|".join(re.escape(p) for p in POLICY_PHRASES)
# C4 drops Wikipedia-style citations (``[1]``, ``[edit]``) from a line before judging it:
# datatrove's pattern (``TABLES["citation"]``) in RE2 (Python's \d is any Unicode digit).
_CITATION_RE2 = r"\[\p{Nd}*\]|\[edit\]|\[citation needed\]"


def _np_bool(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False).astype(bool)


def first_seen(keys: np.ndarray) -> np.ndarray:
    """Per key, whether no earlier entry has the same key."""
    codes, _ = pd.factorize(keys)
    if not len(codes):
        return np.zeros(0, dtype=bool)
    # Codes are numbered in order of first appearance.
    before = np.maximum.accumulate(np.r_[-1, codes[:-1]])
    return codes > before


class Lines:
    """Per-line measures of some rows of a batch (built once, for the rows still pending).

    Attributes:
        rows: the batch rows covered.
        lines: their lines (``text.split("\\n")``, blank ones included), in order.
        line_doc: per line, its text's position in ``rows``.
        chars: per line, its length in characters.
    """

    def __init__(self, arr: pa.Array, rows: np.ndarray) -> None:
        self.rows = rows
        self.texts = pick(arr, rows)
        split = pc.split_pattern(self.texts, "\n")
        self.lines: pa.Array = pc.list_flatten(split)
        self.line_doc = pc.list_parent_indices(split).to_numpy(zero_copy_only=False).astype(
            np.int64)
        self.chars = pc.utf8_length(self.lines).to_numpy(zero_copy_only=False).astype(np.int64)
        self.nonempty = self.chars > 0

    def per_doc(self, per_line: np.ndarray) -> np.ndarray:
        """Per covered text, the sum of ``per_line`` over its lines."""
        return np.bincount(self.line_doc, weights=per_line, minlength=len(self.rows)).astype(
            np.int64)

    @functools.cached_property
    def line_count(self) -> np.ndarray:
        """Per covered text, its lines (blank ones included: newlines + 1)."""
        return np.bincount(self.line_doc, minlength=len(self.rows)).astype(np.int64)

    @functools.cached_property
    def bullets(self) -> np.ndarray:
        """Per line, whether it starts (after spaces and tabs) with "-" or U+2022."""
        out = _np_bool(pc.or_(pc.starts_with(self.lines, "-"),
                              pc.starts_with(self.lines, "\u2022")))
        indented = np.flatnonzero(_np_bool(pc.or_(pc.starts_with(self.lines, " "),
                                                  pc.starts_with(self.lines, "\t"))))
        if len(indented):
            out[indented] = _np_bool(pc.match_substring_regex(
                self.lines.take(pa.array(indented)), r"^[ \t]*(?:-|\x{2022})"))
        return out

    @functools.cached_property
    def ellipsis_ends(self) -> np.ndarray:
        """Per line, whether it ends in "..." or U+2026 (no line ends in whitespace)."""
        return _np_bool(pc.or_(pc.ends_with(self.lines, "..."),
                               pc.ends_with(self.lines, "\u2026")))

    @functools.cached_property
    def text_chars(self) -> np.ndarray:
        """Per covered text, its length in characters."""
        return pc.utf8_length(self.texts).to_numpy(zero_copy_only=False).astype(np.int64)

    @functools.cached_property
    def repeated(self) -> np.ndarray:
        """Per line, whether it is non-empty and equals an earlier line of its text."""
        codes = self.lines.dictionary_encode().indices.to_numpy(zero_copy_only=False)
        keys = self.line_doc * (int(codes.max(initial=0)) + 1) + codes
        out = np.zeros(len(self.lines), dtype=bool)
        out[self.nonempty] = ~first_seen(keys[self.nonempty])
        return out

    @functools.cached_property
    def paragraphs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per covered text: paragraphs (split on blank lines), repeated ones, their chars."""
        split = pc.split_pattern(self.texts, "\n\n")
        paras = pc.list_flatten(split)
        doc = pc.list_parent_indices(split).to_numpy(zero_copy_only=False).astype(np.int64)
        codes = paras.dictionary_encode().indices.to_numpy(zero_copy_only=False)
        repeat = ~first_seen(doc * (int(codes.max(initial=0)) + 1) + codes)
        chars = pc.utf8_length(paras).to_numpy(zero_copy_only=False).astype(np.int64)
        n = len(self.rows)
        return (np.bincount(doc, minlength=n), np.bincount(doc, weights=repeat, minlength=n),
                np.bincount(doc, weights=chars * repeat, minlength=n))

    def matches(self, pattern: str) -> np.ndarray:
        """Per line, whether the RE2 ``pattern`` matches it."""
        return _np_bool(pc.match_substring_regex(self.lines, pattern))

    @functools.cached_property
    def chunks(self) -> Chunks:
        """The lines' whitespace-separated chunks."""
        return chunks(self.lines)

    @functools.cached_property
    def words(self) -> Words:
        """The tokens of the covered texts, line by line."""
        return words(self.lines, self.line_doc, len(self.rows), self.chunks)

    @functools.cached_property
    def bounds(self) -> Bounds:
        """Bounds of the covered texts' word counts, without the costly tokenization."""
        return bounds(self.chunks, self.line_doc, len(self.rows))

    @functools.cached_property
    def c4(self) -> C4Lines:
        """C4's line checks."""
        return C4Lines(self)


class C4Lines:
    """C4QualityFilter's view of the lines (its ``split_paragraph`` mode, as FineWeb ran it).

    A line counts when it has enough whitespace-separated words and none too long (C4 drops the
    others first); "lorem ipsum" or a curly bracket in a counted line rejects the text (a curly
    bracket only outside "javascript" lines, which C4 drops before that check); sentences are
    counted (spaCy's sentencizer) in the counted lines without "javascript" or a policy phrase.
    C4 judges each line with its citations removed.
    """

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.line_words = lines.chunks.line_words
        self.longest_word = lines.chunks.line_longest
        cited = np.zeros(len(lines.lines), dtype=bool)
        bracket = np.flatnonzero(_np_bool(pc.match_substring(lines.lines, "[")))
        if len(bracket):
            cited[bracket] = _np_bool(pc.match_substring_regex(
                lines.lines.take(pa.array(bracket)), _CITATION_RE2))
        self.cited = np.flatnonzero(cited)
        judged = lines.lines
        if len(self.cited):
            judged = pc.replace_with_mask(judged, pa.array(cited), pc.replace_substring_regex(
                judged.filter(pa.array(cited)), _CITATION_RE2, ""))
        self.judged = judged
        self._has: dict[str, np.ndarray] = {}

    def has(self, pattern: str) -> np.ndarray:
        """Per line, whether ``pattern`` (RE2) occurs in it with its citations removed."""
        if pattern not in self._has:
            self._has[pattern] = _np_bool(pc.match_substring_regex(self.judged, pattern))
        return self._has[pattern]

    def counted(self, min_words: int, max_word_chars: int) -> np.ndarray:
        """Per line, whether C4 judges it (enough words, none longer than ``max_word_chars``)."""
        return (self.line_words >= min_words) & (self.longest_word <= max_word_chars)

    def sentences(self, counted: np.ndarray) -> np.ndarray:
        """Per covered text, the sentences in its ``counted`` lines that have no "javascript"
        and no policy phrase."""
        lines = self.lines
        keep = counted & ~self.has("(?i)javascript") & ~self.has(_POLICY_RE2)
        per_line = sentences_per_line(lines.words, len(lines.lines))
        for i in self.cited[keep[self.cited]].tolist():  # re-tokenized without their citations
            per_line[i] = count_sentences(self.judged[i].as_py())
        return lines.per_doc(per_line * keep)


def count_sentences(line: str) -> int:
    """spaCy's sentencizer on one line's tokens: how many sentences (the plain statement)."""
    flags = [token_flags(t) for t in tokenize(line)]
    if not flags:
        return 0
    count, seen_end = 1, False
    for f in flags:
        if seen_end and not f & (PUNCT | SENTENCE_END):
            count += 1
            seen_end = False
        elif f & SENTENCE_END:
            seen_end = True
    return count


def sentences_per_line(w: Words, n_lines: int) -> np.ndarray:
    """``count_sentences`` of every line at once, from the batch's tokens."""
    at, line = w.stream()
    flags = w.flags[at]
    ends = (flags & SENTENCE_END) > 0
    plain = (flags & (PUNCT | SENTENCE_END)) == 0
    out = np.bincount(line, minlength=n_lines) > 0  # a line with a token has one sentence
    out = out.astype(np.int64)
    pos = np.flatnonzero(plain)
    if not len(pos):
        return out
    ends_before = np.r_[0, np.cumsum(ends)]  # sentence ends among the tokens before each
    first_of_line = np.zeros(n_lines, dtype=np.int64)
    first_of_line[line[::-1]] = np.arange(len(line))[::-1]
    prev = np.r_[-1, pos[:-1]]
    same = np.r_[False, line[pos][1:] == line[pos][:-1]]
    prev[~same] = first_of_line[line[pos][~same]] - 1
    # A plain token starts a sentence if a sentence end came after the previous plain token.
    starts = ends_before[pos] - ends_before[prev + 1] > 0
    out += np.bincount(line[pos][starts], minlength=n_lines)
    return out
