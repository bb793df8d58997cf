"""Why a document is rejected: the one table of reasons, in the order they are checked.

Each row of ``REASONS`` names a reason, the ``clean:`` parameters (``CleanConfig`` fields) it
reads, what it means, and, for the quality filters, the vectorised test over a batch. The first
reason that applies to a document wins. Everything else reads this table: the engine's reason
codes (``QUALITY_REASONS``), the docs' list (docs/data.md, ``reasons_markdown``; a unit test keeps
them equal), the ``params.yaml`` comments (checked by the same test) and the tests.

The quality filters are FineWeb's (datatrove's Gopher repetition, Gopher quality, C4 and FineWeb
quality filters, held to datatrove by ``tests/unit/test_datatrove_oracle.py``) and a few of
gptops's own; language identification is FineWeb's (fastText lid.176). They are ordered by cost:
the per-byte counts first, then the line rules, the word rules (spaCy's tokens, ``words``), the
n-gram rules and language identification last, each costly one judging only the texts every
earlier filter kept (which reason a text gets when it fails several is the first in this order).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from gpt.config import CleanConfig
from gpt.data.clean.arrow import pick
from gpt.data.clean.decontam import EvalSets
from gpt.data.clean.features import Features
from gpt.data.clean.language import identify
from gpt.data.clean.lines import Lines
from gpt.data.clean.repetition import Tokens
from gpt.data.clean.urls import blocked
from gpt.data.clean.words import Bounds


@dataclass
class Batch:
    """What a quality filter judges: a batch of normalised texts and their counts.

    Attributes:
        arr: the texts (``large_string``).
        f: their ``Features``.
        pending: per text, whether no earlier filter has rejected it. A costly filter may
            judge only these rows: its answer for the others is not used.
        urls: the documents' URLs ("" for none; ``None``: the source has no ``url`` column).
        columns: per-text values a filter measured: the detail of a reason (``language``,
            ``contaminated``), and columns of the kept documents (``language``,
            ``language_score``).
        evals: the evaluation sets to check documents against (``None``: none).
    """

    arr: pa.Array
    f: Features
    pending: np.ndarray
    urls: list[str] | None = None
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    evals: EvalSets | None = None
    _lines: dict[str, Lines] = field(default_factory=dict)
    _tokens: Tokens | None = None
    _counts: Bounds | None = None

    def lines(self, purpose: str = "lines") -> Lines:
        """The lines of the texts pending when ``purpose`` first asked: the line rules split
        once, the word-count rules (which come later and judge fewer texts) once more, the
        rules that need every token ("tokens": sentences, n-grams) once more."""
        if purpose not in self._lines:
            self._lines[purpose] = Lines(self.arr, np.flatnonzero(self.pending))
        return self._lines[purpose]

    def counts(self, cfg: CleanConfig) -> Bounds:
        """The word-count rules' counts of the texts pending when first asked: ``Bounds``
        where they decide every such rule, spaCy's tokens (``Lines.words``) only for the
        texts where they do not."""
        if self._counts is None:
            lines = self.lines("words")
            c = replace(lines.bounds, exact=lines.bounds.exact.copy())  # resolved in place
            alive = np.ones(len(lines.rows), dtype=bool)
            undecided = np.zeros(len(lines.rows), dtype=bool)
            for verdict in _COUNT_RULES.values():
                surely, passes = verdict(c, lines, self, cfg)
                undecided |= alive & ~surely & ~passes
                alive &= ~surely
            undecided &= ~c.exact
            self._counts = c
            self.resolve(undecided)
        return self._counts

    def resolve(self, undecided: np.ndarray) -> None:
        """Count the tokens of the texts ``undecided`` (a mask over the word-count rules'
        texts): of those texts alone, or, when they are most, of every text (the split into
        chunks is made already, and the rules that need every token use it too)."""
        if not undecided.any():
            return
        assert self._counts is not None
        lines = self.lines("words")
        if undecided.sum() * 2 > len(undecided):
            self._counts.resolve(undecided, lines.words, undecided)
        else:
            self._counts.resolve(undecided, Lines(self.arr, lines.rows[undecided]).words)

    def token_lines(self) -> Lines:
        """Lines whose tokens the rules that need every token count: those the word-count rules
        counted already, or the lines of the texts pending when first asked."""
        words = self._lines.get("words")
        if words is not None and "words" in words.__dict__:  # tokens counted (a cached_property)
            return words
        return self.lines("tokens")

    def tokens(self) -> Tokens:
        """The tokens, in text order, of the texts pending when first asked."""
        if self._tokens is None:
            lines = self.token_lines()
            keep = self.pending[lines.rows]
            at, line = lines.words.stream()
            doc = lines.line_doc[line]
            sel = keep[doc]
            self._tokens = Tokens(lines.words.ids[at[sel]], lines.words.lengths[at[sel]],
                                  (np.cumsum(keep) - 1)[doc[sel]], int(keep.sum()),
                                  lines.rows[keep])
        return self._tokens

    def spread(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Values for some rows as a per-text array (false or 0 for the others)."""
        out = np.zeros(len(self.arr), dtype=values.dtype)
        out[rows] = values
        return out


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


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """``part / whole`` (both counts); nan where ``whole`` is 0 (every comparison false)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return part / np.where(whole > 0, whole, np.nan)


def _line_rule(measure: Callable[[Lines, CleanConfig], np.ndarray]) -> Predicate:
    """A rule judged from the lines of the pending texts."""
    def rejects(b: Batch, cfg: CleanConfig) -> np.ndarray:
        lines = b.lines()
        return b.spread(lines.rows, measure(lines, cfg))
    return rejects


def _word_rule(measure: Callable[[Lines, CleanConfig], np.ndarray]) -> Predicate:
    """A rule judged from the tokens (and lines) of the pending texts."""
    def rejects(b: Batch, cfg: CleanConfig) -> np.ndarray:
        lines = b.lines("words")
        return b.spread(lines.rows, measure(lines, cfg))
    return rejects


def _short_lines(t: Lines, cfg: CleanConfig) -> np.ndarray:
    short = t.per_doc(t.nonempty & (t.chars <= cfg.short_line_chars))
    return _share(short, t.per_doc(t.nonempty)) > cfg.max_short_line_fraction


def _repeated_lines(t: Lines, cfg: CleanConfig) -> np.ndarray:
    return _share(t.per_doc(t.repeated), t.per_doc(t.nonempty)) > cfg.max_dup_line_fraction


def _repeated_line_chars(t: Lines, cfg: CleanConfig) -> np.ndarray:
    return _share(t.per_doc(t.chars * t.repeated), t.text_chars) > \
        cfg.max_dup_line_char_fraction


def _repeated_paragraphs(t: Lines, cfg: CleanConfig) -> np.ndarray:
    paras, repeated, _ = t.paragraphs
    return _share(repeated, paras) > cfg.max_dup_para_fraction


def _repeated_paragraph_chars(t: Lines, cfg: CleanConfig) -> np.ndarray:
    return _share(t.paragraphs[2], t.text_chars) > cfg.max_dup_para_char_fraction


def _char_duplicates(t: Lines, cfg: CleanConfig) -> np.ndarray:
    return _share(t.per_doc(t.chars * t.repeated), t.text_chars - t.line_count + 1) > \
        cfg.max_char_dup_fraction


def _bullet_lines(t: Lines, cfg: CleanConfig) -> np.ndarray:
    return _share(t.per_doc(t.bullets), t.line_count) > cfg.max_bullet_line_fraction


def _ellipsis_lines(t: Lines, cfg: CleanConfig) -> np.ndarray:
    return _share(t.per_doc(t.ellipsis_ends), t.line_count) > cfg.max_ellipsis_line_fraction


# The word-count rules. Each states its test on the counts and gives, from their bounds,
# ``(surely, passes)``: the texts it rejects whatever the exact counts are (its test at the
# bounds that reject least; the test itself where the counts are exact) and those it surely
# keeps (at the bounds that reject most). Each test is monotone in each count (nan, from a
# count of 0, only where the bounds are exact or the text is left undecided), and the
# divisions are IEEE's, which are monotone too.
Verdict = tuple[np.ndarray, np.ndarray]
_LO, _HI = 0, 1


def _too_few_words(c: Bounds, t: Lines, b: Batch, cfg: CleanConfig) -> Verdict:
    def test(w: np.ndarray) -> np.ndarray:
        return (w < cfg.min_words) | (w == 0)
    return test(c.words[_HI]), ~test(c.words[_LO])


def _too_many_words(c: Bounds, t: Lines, b: Batch, cfg: CleanConfig) -> Verdict:
    return c.words[_LO] > cfg.max_words, c.words[_HI] <= cfg.max_words


def _word_length(c: Bounds, t: Lines, b: Batch, cfg: CleanConfig) -> Verdict:
    def short(chars: np.ndarray, words: np.ndarray) -> np.ndarray:
        return _share(chars, words) < cfg.min_mean_word_length

    def long(chars: np.ndarray, words: np.ndarray) -> np.ndarray:
        return _share(chars, words) > cfg.max_mean_word_length
    (c_lo, c_hi), (w_lo, w_hi) = c.word_chars, c.words
    surely = short(c_hi, w_lo) | long(c_lo, w_hi)
    return surely, (w_lo > 0) & ~short(c_lo, w_hi) & ~long(c_hi, w_lo)


def _symbol_ratio(c: Bounds, t: Lines, b: Batch, cfg: CleanConfig) -> Verdict:
    rows = t.rows

    def test(tokens: np.ndarray) -> np.ndarray:
        return (_share(b.f.hashes[rows], tokens) > cfg.max_symbol_ratio) | \
            (_share(b.f.ellipses[rows], tokens) > cfg.max_symbol_ratio)
    return test(c.tokens[_HI]), (c.tokens[_LO] > 0) & ~test(c.tokens[_LO])


def _alpha_words(c: Bounds, t: Lines, b: Batch, cfg: CleanConfig) -> Verdict:
    def test(alpha: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return _share(alpha, tokens) < cfg.min_alpha_word_fraction
    (a_lo, a_hi), (t_lo, t_hi) = c.alpha, c.tokens
    return test(a_hi, t_lo), (t_lo > 0) & ~test(a_lo, t_hi)


def _stop_words(c: Bounds, t: Lines, b: Batch, cfg: CleanConfig) -> Verdict:
    return c.stops[_HI] < cfg.min_stop_words, c.stops[_LO] >= cfg.min_stop_words


def _newline_ratio(c: Bounds, t: Lines, b: Batch, cfg: CleanConfig) -> Verdict:
    def test(tokens: np.ndarray) -> np.ndarray:
        return _share(t.line_count - 1, tokens) > cfg.max_newline_ratio
    return test(c.tokens[_HI]), (c.tokens[_LO] > 0) & ~test(c.tokens[_LO])


#: The word-count rules, in checking order (their rows of ``REASONS`` name them).
_COUNT_RULES: dict[str, Callable[[Bounds, Lines, Batch, CleanConfig], Verdict]] = {
    "too_few_words": _too_few_words, "too_many_words": _too_many_words,
    "word_length": _word_length, "symbol_ratio": _symbol_ratio, "alpha_words": _alpha_words,
    "stop_words": _stop_words, "newline_ratio": _newline_ratio}


def _count_rule(name: str) -> Predicate:
    """A word-count rule: judged from ``Batch.counts`` (exact wherever its verdict needs)."""
    verdict = _COUNT_RULES[name]

    def rejects(b: Batch, cfg: CleanConfig) -> np.ndarray:
        c = b.counts(cfg)
        lines = b.lines("words")
        surely, passes = verdict(c, lines, b, cfg)
        # Texts an earlier rule surely rejects were left undecided; if still pending, count.
        undecided = ~surely & ~passes & ~c.exact & b.pending[lines.rows]
        if undecided.any():
            b.resolve(undecided)
            surely = verdict(c, lines, b, cfg)[0]
        return b.spread(lines.rows, surely)
    return rejects


def _c4_counted(t: Lines, cfg: CleanConfig) -> np.ndarray:
    return t.c4.counted(cfg.min_line_words, cfg.max_line_word_chars)


def _lorem_ipsum(t: Lines, cfg: CleanConfig) -> np.ndarray:
    if not cfg.reject_lorem_ipsum:
        return np.zeros(len(t.rows), dtype=bool)
    return t.per_doc(_c4_counted(t, cfg) & t.c4.has("(?i)lorem ipsum")) > 0


def _curly_bracket(t: Lines, cfg: CleanConfig) -> np.ndarray:
    if not cfg.reject_curly_brackets:
        return np.zeros(len(t.rows), dtype=bool)
    hit = _c4_counted(t, cfg) & ~t.c4.has("(?i)javascript") & t.c4.has(r"\{")
    return t.per_doc(hit) > 0


def _too_few_sentences(b: Batch, cfg: CleanConfig) -> np.ndarray:
    if cfg.min_sentences <= 0:
        return np.zeros(len(b.arr), dtype=bool)
    t = b.token_lines()
    return b.spread(t.rows, t.c4.sentences(_c4_counted(t, cfg)) < cfg.min_sentences)


def _top_ngram(b: Batch, cfg: CleanConfig) -> np.ndarray:
    if not cfg.max_top_ngram_fraction:
        return np.zeros(len(b.arr), dtype=bool)
    tok = b.tokens()
    chars = b.f.chars[tok.rows]
    hit = np.zeros(tok.n_docs, dtype=bool)
    for n, fraction in cfg.max_top_ngram_fraction:
        hit |= _share(tok.top_ngram_chars(n), chars) > fraction
    return b.spread(tok.rows, hit)


def _repeated_ngrams(b: Batch, cfg: CleanConfig) -> np.ndarray:
    if not cfg.max_dup_ngram_fraction:
        return np.zeros(len(b.arr), dtype=bool)
    tok = b.tokens()
    chars = b.f.chars[tok.rows]
    hit = np.zeros(tok.n_docs, dtype=bool)
    for n, fraction in cfg.max_dup_ngram_fraction:
        hit |= tok.duplicate_ngrams_over(n, fraction, chars)
    return b.spread(tok.rows, hit)


def _url_blocked(b: Batch, cfg: CleanConfig) -> np.ndarray:
    if not cfg.url_blocklist or b.urls is None:
        return np.zeros(len(b.arr), dtype=bool)
    return blocked(b.urls, tuple(cfg.url_blocklist))


def _contaminated(b: Batch, cfg: CleanConfig) -> np.ndarray:
    """The texts still pending that share an n-gram with an evaluation item."""
    hit = np.zeros(len(b.arr), dtype=bool)
    if b.evals is None or cfg.decontaminate_ngram <= 0:
        return hit
    rows = np.flatnonzero(b.pending)
    found = b.evals.find(pick(b.arr, rows).to_pylist()) if len(rows) else np.zeros(0, np.int64)
    names = np.full(len(b.arr), "", dtype=object)
    names[rows[found >= 0]] = np.array(b.evals.names, dtype=object)[found[found >= 0]]
    b.columns["contaminated"] = names
    return names != ""


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


_C4_LINES = ("min_line_words", "max_line_word_chars")
_C4_COUNTED = ("lines with at least `min_line_words` whitespace-separated words and none "
               "longer than `max_line_word_chars` characters")

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
    Reason("low_alpha", ("min_alpha_ratio",),
           "less than `min_alpha_ratio` of the non-whitespace characters are letters",
           lambda b, c: b.f.letters / np.maximum(b.f.word_chars, 1) < c.min_alpha_ratio),
    Reason("line_punctuation", ("min_punct_line_fraction",),
           "less than `min_punct_line_fraction` of the non-empty lines end in punctuation",
           lambda b, c: b.f.punct_lines / np.maximum(b.f.lines, 1) < c.min_punct_line_fraction),
    Reason("short_lines", ("max_short_line_fraction", "short_line_chars"),
           "more than `max_short_line_fraction` of the non-empty lines have at most "
           "`short_line_chars` characters (FineWeb)", _line_rule(_short_lines)),
    Reason("repeated_lines", ("max_dup_line_fraction",),
           "more than `max_dup_line_fraction` of the non-empty lines repeat an earlier line "
           "(Gopher)", _line_rule(_repeated_lines)),
    Reason("repeated_line_chars", ("max_dup_line_char_fraction",),
           "lines repeating an earlier line hold more than `max_dup_line_char_fraction` of the "
           "characters (Gopher)", _line_rule(_repeated_line_chars)),
    Reason("repeated_paragraphs", ("max_dup_para_fraction",),
           "more than `max_dup_para_fraction` of the paragraphs (split on blank lines) repeat an "
           "earlier one (Gopher)", _line_rule(_repeated_paragraphs)),
    Reason("repeated_paragraph_chars", ("max_dup_para_char_fraction",),
           "paragraphs repeating an earlier one hold more than `max_dup_para_char_fraction` of "
           "the characters (Gopher)", _line_rule(_repeated_paragraph_chars)),
    Reason("char_duplicates", ("max_char_dup_fraction",),
           "lines repeating an earlier line hold more than `max_char_dup_fraction` of the "
           "characters other than line breaks (FineWeb)", _line_rule(_char_duplicates)),
    Reason("bullet_lines", ("max_bullet_line_fraction",),
           "more than `max_bullet_line_fraction` of the lines start with a bullet (`-` or "
           "U+2022) (Gopher)", _line_rule(_bullet_lines)),
    Reason("ellipsis_lines", ("max_ellipsis_line_fraction",),
           "more than `max_ellipsis_line_fraction` of the lines end in an ellipsis (Gopher)",
           _line_rule(_ellipsis_lines)),
    Reason("too_few_words", ("min_words",),
           "fewer than `min_words` words (spaCy tokens with a character other than "
           "punctuation), or none (Gopher)", _count_rule("too_few_words")),
    Reason("too_many_words", ("max_words",), "more than `max_words` words (Gopher)",
           _count_rule("too_many_words")),
    Reason("word_length", ("min_mean_word_length", "max_mean_word_length"),
           "mean word length below `min_mean_word_length` or above `max_mean_word_length` "
           "(Gopher)", _count_rule("word_length")),
    Reason("symbol_ratio", ("max_symbol_ratio",),
           "more than `max_symbol_ratio` `#` per token, or as many ellipses (`...`, `…`) "
           "(Gopher)", _count_rule("symbol_ratio")),
    Reason("alpha_words", ("min_alpha_word_fraction",),
           "less than `min_alpha_word_fraction` of the tokens have a letter (Gopher)",
           _count_rule("alpha_words")),
    Reason("stop_words", ("min_stop_words",),
           "fewer than `min_stop_words` of Gopher's stop words (the, be, to, of, and, that, "
           "have, with) (Gopher)",
           _count_rule("stop_words")),
    Reason("newline_ratio", ("max_newline_ratio",),
           "more than `max_newline_ratio` line breaks per token (FineWeb)",
           _count_rule("newline_ratio")),
    Reason("lorem_ipsum", ("reject_lorem_ipsum", *_C4_LINES),
           f"\"lorem ipsum\" in one of the {_C4_COUNTED} (if `reject_lorem_ipsum`; C4)",
           _word_rule(_lorem_ipsum)),
    Reason("curly_bracket", ("reject_curly_brackets", *_C4_LINES),
           f"a `{{` in one of the {_C4_COUNTED}, outside lines that mention \"javascript\" (if "
           "`reject_curly_brackets`; C4)", _word_rule(_curly_bracket)),
    Reason("too_few_sentences", ("min_sentences", *_C4_LINES),
           f"fewer than `min_sentences` sentences (spaCy's sentencizer) in the {_C4_COUNTED}, "
           "leaving out lines that mention \"javascript\" or a policy or cookie phrase (C4)",
           _too_few_sentences),
    Reason("top_ngram", ("max_top_ngram_fraction",),
           "for a `[n, fraction]` of `max_top_ngram_fraction`, the most frequent n-gram of "
           "tokens times its count holds more than that fraction of the characters (Gopher)",
           _top_ngram),
    Reason("repeated_ngrams", ("max_dup_ngram_fraction",),
           "for a `[n, fraction]` of `max_dup_ngram_fraction`, n-grams of tokens repeating an "
           "earlier one hold more than that fraction of the characters (Gopher)",
           _repeated_ngrams),
    Reason("contaminated", ("decontaminate_ngram",),
           "shares a word n-gram (`decontaminate_ngram` words; an item shorter than that, whole) "
           "with an item of the evaluation set `<set>`: the data of the "
           "`evaluate.benchmark_dirs` tasks (`bench:<task>`), the fine-tuning classifier's test "
           "rows (`finetune_test`) or the SFT test pairs (`sft_test`) when they come from files",
           _contaminated, detail="<set>"),
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
CONTAMINATED = BY_NAME["contaminated"].name
#: The quality code of the decontamination filter (its reason carries the evaluation set).
CONTAMINATED_CODE = QUALITY_REASONS.index(CONTAMINATED)
#: The quality code of the language filter (its reason carries the language code).
LANGUAGE_CODE = QUALITY_REASONS.index(LANGUAGE)
NEAR_DUPLICATE_OF = BY_NAME["near_duplicate_of"].name


def quality_codes(arr: pa.Array, f: Features, cfg: CleanConfig,
                  urls: list[str] | None = None, evals: EvalSets | None = None,
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The first quality filter each (normalised) text fails, as a ``QUALITY_REASONS`` code.

    Args:
        arr: normalised texts.
        f: their ``features``.
        cfg: the ``clean`` section of the params.
        urls: the documents' URLs (``None`` when the source has none).
        evals: the evaluation sets (``decontam.load``; ``None``: no decontamination).

    Returns:
        ``int8`` codes, 0 for the texts that pass every filter, and the columns the filters
        measured (``Batch.columns``; e.g. ``language``: the code of each text judged, "" else).
    """
    codes = np.zeros(len(arr), dtype=np.int8)
    batch = Batch(arr, f, np.ones(len(arr), dtype=bool), urls, evals=evals)
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
