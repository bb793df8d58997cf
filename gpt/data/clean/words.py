"""Words as FineWeb's rules count them: spaCy's English tokenizer, restated, over whole batches.

datatrove's Gopher and FineWeb rules split a text with spaCy's blank English tokenizer
(``split_into_words``): whitespace first, then each whitespace-separated chunk on its own into
prefixes, suffixes, infixes and special cases ("don't" -> "do", "n't"; "e.g." stays whole).
``tokenize_chunk`` is that algorithm (spaCy's ``Tokenizer._split_affixes``/``_attach_tokens``
and its special-case matcher) in plain Python, on spaCy's own patterns and special cases, kept in
``fineweb.json`` (``tests/unit/fineweb_tables.py`` builds it; a unit test checks it against the
installed spaCy), so neither spaCy nor datatrove is needed to clean.

A chunk's tokens depend on the chunk alone, so a batch is tokenized per distinct chunk:
``words`` splits the lines of a batch into chunks with Arrow, and most distinct chunks (letters
with punctuation around them: ``"(word),"``) are tokenized in RE2 and numpy at once; only the
others go through ``tokenize_chunk`` (cached across batches).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from re import _constants as sre_constants  # the suffix pattern's structure
from re import _parser as sre_parse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt.data.clean.arrow import byte_offsets, raw_bytes

TABLES: dict = json.loads(resources.files("gpt.data.clean").joinpath("fineweb.json").read_text(
    encoding="utf-8"))
_PREFIX = re.compile(TABLES["prefix"]).search
_SUFFIX = re.compile(TABLES["suffix"]).search
_INFIX = re.compile(TABLES["infix"]).finditer
_URL = re.compile(TABLES["url"]).match
_SPECIAL: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in TABLES["special"].items()}
#: datatrove's punctuation: a token made only of these is a symbol, not a word.
PUNCTUATION = frozenset(TABLES["punctuation"])
#: spaCy's sentencizer ends a sentence after a token that is one of these.
SENTENCE_PUNCTUATION = frozenset(TABLES["sentence_punctuation"])
#: Gopher's stop words (``min_stop_words`` of them must appear).
STOP_WORDS: tuple[str, ...] = tuple(TABLES["stop_words"])

# Token flags (``Words.flags``): a word (not only punctuation), has a letter, ends a sentence
# (sentencizer punctuation), is punctuation by Unicode category (the sentencizer skips it).
WORD, ALPHA, SENTENCE_END, PUNCT = 1, 2, 4, 8


# Shortcuts, checked over every letter and digit by test_clean_words: no prefix starts with a
# letter or digit but "US$", "C$" and "A$"; a suffix ends in a letter only as "'s" (four
# spellings) or as a unit (at most six characters) right after a digit. Prefixes and suffixes
# are at most a few characters (with a character of context) unless they are runs of dots, so
# the patterns need only look at a chunk's ends.
_LETTER_PREFIXES = ("US$", "C$", "A$")
_HEAD, _TAIL = 6, 12
# An infix is a run of dots, an ellipsis, a symbol (Unicode So) or one of these between letters
# or digits: a chunk without any of them has none.
_MAYBE_INFIX = re.compile("[.,:<>=/+*^~\\-\u2013\u2014\u2026]|[^\\x00-\\x7f\\w]")
# The infix pattern, trying its alternatives only where a match can start (_check_infix_starts).
_INFIX_AT = re.compile(f"(?=(?:{_MAYBE_INFIX.pattern}))(?:{TABLES['infix']})").finditer


def _prefix_len(s: str) -> int:
    if s[0].isalnum() and not s.startswith(_LETTER_PREFIXES):
        return 0
    m = _PREFIX(s if s.startswith("..") else s[:_HEAD])
    return m.end() - m.start() if m else 0


def _alternatives(pattern: str) -> list[str]:
    """The top-level alternatives of a regex (split at each ``|`` outside groups and sets)."""
    out, depth, in_set, start, i = [], 0, False, 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 1
        elif in_set:
            in_set = ch != "]"
        elif ch == "[":
            in_set = True
            # a "]" first in a set is one of its characters
            i += 2 if pattern.startswith("^]", i + 1) else int(pattern.startswith("]", i + 1))
        elif ch in "()":
            depth += 1 if ch == "(" else -1
        elif ch == "|" and not depth:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    return [*out, pattern[start:]]


# Every alternative of the suffix pattern matches one character or more up to the end: the
# leftmost match is where the first alternative that matches at all starts. Those of one
# character can only start at the last one, so the search over every start position needs only
# the few longer ones (checked here).
_SUFFIX_ALTERNATIVES = _alternatives(TABLES["suffix"])
assert "|".join(_SUFFIX_ALTERNATIVES) == TABLES["suffix"]
_WIDTHS = [sre_parse.parse(a).getwidth() for a in _SUFFIX_ALTERNATIVES]
assert all(lo >= 1 and sre_parse.parse(a)[-1] == (sre_constants.AT, sre_constants.AT_END)
           for a, (lo, _) in zip(_SUFFIX_ALTERNATIVES, _WIDTHS, strict=True))
_SUFFIX_LONG = re.compile("|".join(a for a, (_, hi) in zip(_SUFFIX_ALTERNATIVES, _WIDTHS,
                                                           strict=True) if hi > 1)).search
_SUFFIX_ONE = re.compile("|".join(a for a, (_, hi) in zip(_SUFFIX_ALTERNATIVES, _WIDTHS,
                                                          strict=True) if hi == 1)).match


def _suffix_span(s: str) -> tuple[int, int] | None:
    """``_SUFFIX(s).span()`` (``None``: no match)."""
    if "\n" in s:  # "$" also matches before a final newline: the whole pattern then
        m = _SUFFIX(s)
        return m.span() if m else None
    m = _SUFFIX_LONG(s)
    if m is not None and m.start() < len(s) - 1:
        return m.start(), len(s)
    return (len(s) - 1, len(s)) if m is not None or (s and _SUFFIX_ONE(s, len(s) - 1)) else None


def _suffix_len(s: str) -> int:
    if not s or s[-1].isalpha() and s[-2:-1] not in ("'", "\u2019") and not any(
            c.isdigit() for c in s[-8:-1]):
        return 0
    if len(s) > _TAIL and not s.endswith(".."):
        span = _suffix_span(s[-_TAIL:])  # a match starting at 2 or later has its context there
        if span is None or span[0] >= 2:
            return span[1] - span[0] if span else 0
    span = _suffix_span(s)
    return span[1] - span[0] if span else 0


def _affixes(s: str, specials: bool = True) -> list[str]:
    """spaCy's ``_split_affixes`` then ``_attach_tokens`` for one chunk."""
    prefixes: list[str] = []
    suffixes: list[str] = []
    last = 0
    while s and len(s) != last:
        if specials and s in _SPECIAL:
            break
        last = len(s)
        pre = _prefix_len(s)
        if pre:
            prefix, minus_pre = s[:pre], s[pre:]
            if minus_pre and specials and minus_pre in _SPECIAL:
                s = minus_pre
                prefixes.append(prefix)
                break
        suf = _suffix_len(s[pre:])
        if suf:
            suffix, minus_suf = s[-suf:], s[:-suf]
            if minus_suf and specials and minus_suf in _SPECIAL:
                s = minus_suf
                suffixes.append(suffix)
                break
        if pre and suf and pre + suf <= len(s):
            s = s[pre:-suf]
            prefixes.append(prefix)
            suffixes.append(suffix)
        elif pre:
            s = minus_pre
            prefixes.append(prefix)
        elif suf:
            s = minus_suf
            suffixes.append(suffix)
    out = prefixes
    if s:
        if specials and s in _SPECIAL:
            out.extend(_SPECIAL[s])
        elif not _MAYBE_INFIX.search(s) or "." in s and _URL(s):
            out.append(s)
        else:
            start = 0
            for m in _INFIX_AT(s):
                a, b = m.start(), m.end()
                if a == 0:
                    continue
                if a != start:
                    out.append(s[start:a])
                if a != b:
                    out.append(s[a:b])
                start = b
            if s[start:]:
                out.append(s[start:])
    out.extend(reversed(suffixes))
    return out


# spaCy's special-case matcher: after the affixes, special cases they split are found again
# among the text's tokens (":)" in "word:)") and put back together, longest first, then
# leftmost. A match across a space (": )") has no special case and changes nothing, but it
# still keeps overlapping matches from applying: so the tokens of a chunk with such a special
# case can depend on its neighbours.
_MATCHED: dict[tuple[str, ...], str] = {}
for _key in _SPECIAL:
    if _PREFIX(_key) or _SUFFIX(_key) or any(True for _ in _INFIX(_key)) or " " in _key:
        _MATCHED.setdefault(tuple(_affixes(_key, False)), _key)
_BY_PAIR: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
for _pattern in _MATCHED:
    if len(_pattern) > 1:
        _BY_PAIR.setdefault(_pattern[:2], []).append(_pattern)
_NON_SPACE = re.compile(r"\S+")
_PAIR_FIRSTS = frozenset(pair[0] for pair in _BY_PAIR)


def _special_spans(tokens: list[str], joins: list[str | None]) -> tuple[list[str], bool]:
    """The matcher over a run of tokens; ``joins[i]`` is what separates token ``i`` from the one
    before: "" (same chunk), " " (one space) or ``None`` (other whitespace: spaCy has a
    whitespace token there, so nothing matches across it). Returns the tokens and whether a
    special case applied."""
    found = [(i, i + len(p)) for i, pair in enumerate(zip(tokens, tokens[1:], strict=False))
             if pair in _BY_PAIR for p in _BY_PAIR[pair] if tuple(tokens[i:i + len(p)]) == p
             and all(joins[k] is not None for k in range(i + 1, i + len(p)))]
    if not found:
        return tokens, False
    found.sort(key=lambda s: (s[1] - s[0], -s[0]))
    seen: set[int] = set()
    keep = []
    for a, b in reversed(found):
        if a not in seen and b - 1 not in seen:
            keep.append((a, b))
        seen.update(range(a, b))
    out: list[str] = []
    at, merged = 0, False
    for a, b in sorted(keep):
        text = tokens[a] + "".join(f"{joins[k]}{tokens[k]}" for k in range(a + 1, b))
        if text in _SPECIAL:
            out += tokens[at:a]
            out += _SPECIAL[text]
            at, merged = b, True
    return out + tokens[at:], merged


@functools.lru_cache(maxsize=1 << 16)
def _chunk_affixes(chunk: str) -> tuple[str, ...]:
    """A chunk's tokens before the matcher (its special case, or its affixes)."""
    return _SPECIAL[chunk] if chunk in _SPECIAL else tuple(_affixes(chunk))


# Prefixes (of two tokens or more) of the matcher's patterns: whether a match could run from one
# chunk into the next.
_OPENINGS = frozenset(p[:k] for p in _MATCHED if len(p) > 1 for k in range(2, len(p) + 1))
_LONGEST = max(map(len, _OPENINGS), default=0)


@functools.lru_cache(maxsize=1 << 16)
def _crosses(left: tuple[str, ...], right: tuple[str, ...]) -> bool:
    """Whether a pattern of the matcher could start in ``left`` and go on into ``right``."""
    for k in range(max(0, len(left) - _LONGEST + 1), len(left)):
        tail = left[k:]
        for m in range(1, min(len(right), _LONGEST - len(tail)) + 1):
            if tail + right[:m] in _OPENINGS:
                return True
    return False


@functools.lru_cache(maxsize=1 << 18)
def _chunk(chunk: str) -> tuple[tuple[str, ...], bool]:
    tokens = _chunk_affixes(chunk)
    if len(tokens) < 2 or _PAIR_FIRSTS.isdisjoint(tokens[:-1]):  # no pattern can start here
        return tokens, False
    out, merged = _special_spans(list(tokens), [""] * len(tokens))
    return tuple(out), merged


def tokenize_chunk(chunk: str) -> tuple[str, ...]:
    """spaCy's English tokens of one whitespace-free chunk on its own."""
    return _chunk(chunk)[0]


def tokenize(text: str) -> list[str]:
    """datatrove's ``split_into_words(text, "en")``: spaCy's tokens, whitespace left out."""
    tokens: list[str] = []
    joins: list[str | None] = []
    end = -1
    for m in _NON_SPACE.finditer(text):
        chunk = list(_chunk_affixes(m.group()))
        joins += [" " if end >= 0 and text[end:m.start()] == " " else None] + [""] * (
            len(chunk) - 1)
        tokens += chunk
        end = m.end()
    return _special_spans(tokens, joins)[0]


@functools.lru_cache(maxsize=1 << 18)
def token_flags(token: str) -> int:
    """``WORD | ALPHA | SENTENCE_END | PUNCT`` bits of one token."""
    return ((WORD if any(c not in PUNCTUATION for c in token) else 0)
            | (ALPHA if any(c.isalpha() for c in token) else 0)
            | (SENTENCE_END if token in SENTENCE_PUNCTUATION else 0)
            | (PUNCT if all(unicodedata.category(c).startswith("P") for c in token) else 0))


# The chunks tokenized in bulk, in RE2 and numpy: prefixes and suffixes that are single
# punctuation characters spaCy always splits off one by one (``_PRE_CHARS``, ``_SUF_CHARS``,
# found from spaCy's patterns), a suffix "." only where spaCy splits it, and between them one
# token: ASCII, starting with a letter, with no character an infix, URL or affix pattern could
# act on inside (``_INNER``), ending in a letter (no digit in it: no unit to split) or a digit,
# and no special case that could reach it.
_ASCII_PUNCT = "".join(c for c in map(chr, range(33, 127)) if not c.isalnum())


def _splits_last(s: str) -> bool:
    """Whether spaCy's suffix pattern splits off the last character of ``s`` alone."""
    m = _SUFFIX(s)
    return m is not None and m.start() == len(s) - 1


_PRE_CHARS = "".join(c for c in _ASCII_PUNCT if _prefix_len(c + "ab") == 1
                     and _prefix_len(c + c + "ab") == 1)
_SUF_CHARS = "".join(c for c in _ASCII_PUNCT if c != "." and all(
    _splits_last(s) for s in ("ab" + c, "AB" + c, "aB" + c, "a5" + c, "a" + c + c,
                              "a" + c + ".")))
_INNER = "!\"#%&()?;@[\\]_`{|}"  # no infix ., :<>=/+*^~- nor ' $ (affixes) nor whitespace
_P, _S, _I = (re.escape(x) for x in (_PRE_CHARS, _SUF_CHARS, _INNER))
_CORE = (rf"[A-Za-z](?:[A-Za-z{_I}]*[a-z])?|(?:[A-Za-z][A-Za-z{_I}]*)?[A-Z][A-Z]|"
         rf"[A-Za-z][A-Za-z0-9{_I}]*[0-9]|(?:[A-Za-z]|[A-Za-z][A-Za-z{_I}]*[a-z{_I}])?[A-Z]")
# A "." right after the core splits after a lowercase letter, two capitals or a digit (the
# first three forms of _CORE), not after another capital.
_EASY = (rf"^(?P<p>[{_P}]*)(?:(?P<c1>(?:[A-Za-z](?:[A-Za-z{_I}]*[a-z])?|"
         rf"(?:[A-Za-z][A-Za-z{_I}]*)?[A-Z][A-Z]|[A-Za-z][A-Za-z0-9{_I}]*[0-9]))"
         rf"(?P<s1>\.?(?:[{_S}]\.?)*)|"
         rf"(?P<c2>(?:[A-Za-z]|[A-Za-z][A-Za-z{_I}]*[a-z{_I}])?[A-Z])(?P<s2>(?:[{_S}]\.?)*))$")
# Cores a special case could reach (any piece of a special case shaped like a core): chunks with
# one go through tokenize_chunk.
_CORE_SHAPE = re.compile(_CORE)
_RISKY_CORES = pa.array(sorted({key[a:b] for key in _SPECIAL for a in range(len(key))
                                if key[a].isascii() and key[a].isalpha()
                                for b in range(a + 1, len(key) + 1)
                                if _CORE_SHAPE.fullmatch(key[a:b])}))
# Special cases made only of the split-off characters (":)", "''"): chunks with one, likewise.
_PUNCT_SPECIALS = "|".join(re.escape(k) for k in _SPECIAL if len(k) > 1 and all(
    c in _PRE_CHARS + _SUF_CHARS + "." for c in k))
_STOP_ARRAY = pa.array(STOP_WORDS)
_STOP_BITS = {w: 1 << i for i, w in enumerate(STOP_WORDS)}
# Per ASCII byte: its flags as a one-character token.
_BYTE_FLAGS = np.array([token_flags(chr(b)) if b else 0 for b in range(128)], dtype=np.int8)


@dataclass
class Totals:
    """Per-document token counts (``Words.totals``)."""

    tokens: np.ndarray
    words: np.ndarray
    word_chars: np.ndarray
    alpha: np.ndarray


@dataclass
class Words:
    """The tokens of a batch's lines, per distinct chunk, and where the chunks occur.

    A line whose tokens depend on more than its chunks one by one (a special case the matcher
    merged inside a chunk, which a neighbouring chunk could block) is one "chunk" of its own.

    Attributes:
        n_docs: documents in the batch.
        chunk_line: per chunk occurrence (in text order), its line.
        line_doc: per line, its document.
        occ: per chunk occurrence, its distinct chunk.
        start: per distinct chunk, where its tokens start in the token arrays (``len + 1``).
        ids: per token, an id (equal tokens, equal ids within the batch).
        lengths: per token, its length in characters.
        flags: per token, ``token_flags``.
        stops: per token, its bit in ``STOP_WORDS`` (0 for the others).
        line_words: per line, its whitespace-separated words.
        line_longest: per line, the characters of its longest whitespace-separated word.
    """

    n_docs: int
    chunk_line: np.ndarray
    line_doc: np.ndarray
    occ: np.ndarray
    start: np.ndarray
    ids: np.ndarray
    lengths: np.ndarray
    flags: np.ndarray
    stops: np.ndarray
    line_words: np.ndarray
    line_longest: np.ndarray

    @property
    def count(self) -> np.ndarray:
        """Tokens per distinct chunk."""
        return np.diff(self.start)

    @functools.cached_property
    def totals(self) -> Totals:
        """Per document: tokens, words (``WORD`` tokens), their characters, ``ALPHA`` tokens."""
        word = (self.flags & WORD) > 0
        columns = np.stack([np.ones(len(self.ids), dtype=np.int64), word,
                            self.lengths * word, (self.flags & ALPHA) > 0], axis=1)
        per_chunk = np.zeros((len(self.count), 4), dtype=np.int64)
        if len(self.ids):
            per_chunk = np.add.reduceat(columns, self.start[:-1], axis=0)
        per_doc = _doc_sums(self.line_doc[self.chunk_line], per_chunk[self.occ], self.n_docs)
        return Totals(*(per_doc[:, k] for k in range(4)))

    def per_doc(self, per_token: np.ndarray) -> np.ndarray:
        """Per document, the sum of ``per_token`` over its tokens."""
        per_chunk = np.zeros(len(self.count), dtype=np.int64)
        if len(per_token):
            per_chunk = np.add.reduceat(per_token.astype(np.int64), self.start[:-1])
            per_chunk[self.count == 0] = 0
        return np.bincount(self.line_doc[self.chunk_line], weights=per_chunk[self.occ],
                           minlength=self.n_docs).astype(np.int64)

    def stop_words(self) -> np.ndarray:
        """Per document, how many distinct ``STOP_WORDS`` it has."""
        chunk_bits = np.zeros(len(self.count), dtype=np.int64)
        has = np.flatnonzero(self.stops)
        np.bitwise_or.at(chunk_bits, np.searchsorted(self.start, has, "right") - 1,
                         self.stops[has])
        doc_bits = np.zeros(self.n_docs, dtype=np.int64)
        occ = np.flatnonzero(chunk_bits[self.occ])
        np.bitwise_or.at(doc_bits, self.line_doc[self.chunk_line[occ]], chunk_bits[self.occ[occ]])
        return np.bitwise_count(doc_bits.astype(np.uint64)).astype(np.int64)

    def stream(self) -> tuple[np.ndarray, np.ndarray]:
        """Every token occurrence in text order: its index in the token arrays, and its line."""
        n = self.count[self.occ]
        return _ragged(self.start[:-1][self.occ], n), np.repeat(self.chunk_line, n)


# ASCII tokens' flags from regexes over a batch's tokens (the others: ``token_flags``).
_ASCII_PUNCT_P = "".join(c for c in _ASCII_PUNCT if unicodedata.category(c).startswith("P"))
_ALL_PUNCT_RE2 = "^[" + re.escape(_ASCII_PUNCT_P) + "]+$"
_ASCII_ENDS = pa.array(sorted(c for c in SENTENCE_PUNCTUATION if c.isascii()))


def _token_columns(tokens: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per token: length, ``token_flags``, stop bit, and its byte if it is one ASCII
    character (else 0)."""
    lengths = _np(pc.utf8_length(tokens))
    is_ascii = pc.string_is_ascii(tokens)
    flags = (_np(pc.match_substring_regex(tokens, "[A-Za-z0-9]")) * WORD
             + _np(pc.match_substring_regex(tokens, "[A-Za-z]")) * ALPHA
             + _np(pc.is_in(tokens, value_set=_ASCII_ENDS)) * SENTENCE_END
             + _np(pc.match_substring_regex(tokens, _ALL_PUNCT_RE2)) * PUNCT)
    others = np.flatnonzero(~is_ascii.to_numpy(zero_copy_only=False))
    if len(others):
        flags[others] = [token_flags(t) for t in tokens.take(pa.array(others)).to_pylist()]
    stop = _np(pc.index_in(tokens, value_set=_STOP_ARRAY).fill_null(-1))
    stops = np.where(stop >= 0, 1 << np.maximum(stop, 0), 0)
    byte = np.zeros(len(tokens), dtype=np.int64)
    single = np.flatnonzero(_np(pc.binary_length(tokens)) == 1)
    if len(single):
        byte[single] = np.frombuffer(raw_bytes(tokens.take(pa.array(single))), dtype=np.uint8)
    return lengths, flags, stops, byte


def _ragged(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    total = int(counts.sum())
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)


def _entangled(distinct: pa.Array, occ: np.ndarray, chunk_line: np.ndarray,
               merged: np.ndarray) -> np.ndarray:
    """The lines where a merged chunk meets a neighbour (on its line) that a matcher pattern
    could run into (a match across the space could keep the merge from applying)."""
    lines: set[int] = set()
    for i in np.flatnonzero(np.isin(occ, merged)).tolist():
        line = int(chunk_line[i])
        if line in lines:
            continue
        here = _chunk_affixes(distinct[int(occ[i])].as_py())
        for j, before in ((i - 1, True), (i + 1, False)):
            if 0 <= j < len(occ) and chunk_line[j] == line:
                there = _chunk_affixes(distinct[int(occ[j])].as_py())
                if _crosses(there, here) if before else _crosses(here, there):
                    lines.add(line)
    return np.array(sorted(lines), dtype=np.int64)


def _mask(arr: pa.Array) -> np.ndarray:
    return arr.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)


def _np(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class Chunks:
    """A batch's lines split on whitespace, the distinct chunks, and which are easy.

    Attributes:
        lines: the lines.
        chunk_line: per chunk occurrence (in text order), its line.
        occ: per chunk occurrence, its distinct chunk.
        distinct: the distinct chunks.
        line_words: per line, its whitespace-separated words.
        line_longest: per line, the characters of its longest whitespace-separated word.
        easy: the distinct chunks tokenized in RE2 and numpy (the others: ``tokenize_chunk``).
        core, first, size, pre_n, suf_n: per easy chunk, its core token, where it starts in
            ``data``, its bytes, and its one-character prefix and suffix tokens.
        data: the bytes the easy chunks are read from.
    """

    lines: pa.Array
    chunk_line: np.ndarray
    occ: np.ndarray
    distinct: pa.Array
    line_words: np.ndarray
    line_longest: np.ndarray
    easy: np.ndarray
    core: pa.Array
    first: np.ndarray
    size: np.ndarray
    pre_n: np.ndarray
    suf_n: np.ndarray
    data: np.ndarray

    @property
    def hard(self) -> np.ndarray:
        """Per distinct chunk, whether it goes through ``tokenize_chunk``."""
        out = np.ones(len(self.distinct), dtype=bool)
        out[self.easy] = False
        return out


def chunks(lines: pa.Array) -> Chunks:
    """Split a batch's lines (no ``"\\n"`` in them) into chunks and find the easy ones."""
    split = pc.ascii_split_whitespace(lines)  # normalised texts: all whitespace is ASCII
    flat = pc.list_flatten(split)
    filled = pc.greater(pc.binary_length(flat), 0)  # "" around leading whitespace, blank lines
    flat = flat.filter(filled)
    chunk_line = _np(pc.list_parent_indices(split).filter(filled))
    encoded = flat.dictionary_encode()
    occ = _np(encoded.indices)
    distinct: pa.Array = encoded.dictionary
    line_words = np.bincount(chunk_line, minlength=len(lines))
    line_longest = np.zeros(len(lines), dtype=np.int64)
    if len(chunk_line):  # chunk_line is non-decreasing: the maximum over each line's run
        lead = np.flatnonzero(np.r_[True, chunk_line[1:] != chunk_line[:-1]])
        line_longest[chunk_line[lead]] = np.maximum.reduceat(
            _np(pc.utf8_length(distinct))[occ], lead)

    # The easy chunks: their prefix and suffix are their leading and trailing runs of split-off
    # characters (the core starts with a letter and ends with a letter or digit).
    fits = _mask(pc.match_substring_regex(distinct, _EASY))
    if _PUNCT_SPECIALS:
        fits &= ~_mask(pc.match_substring_regex(distinct, _PUNCT_SPECIALS))
    cand = distinct.filter(pa.array(fits))
    size = _np(pc.binary_length(cand))
    after_pre = pc.utf8_ltrim(cand, characters=_PRE_CHARS)
    pre_n = size - _np(pc.binary_length(after_pre))
    core = pc.utf8_rtrim(after_pre, characters=_SUF_CHARS + ".")  # (a core starts with a letter)
    suf_n = size - pre_n - _np(pc.binary_length(core))
    data = np.frombuffer(raw_bytes(cand), dtype=np.uint8)
    first = byte_offsets(cand)[:-1]
    ok = ~_mask(pc.is_in(core, value_set=_RISKY_CORES))
    return Chunks(lines, chunk_line, occ, distinct, line_words, line_longest,
                  np.flatnonzero(fits)[ok], core.filter(pa.array(ok)), first[ok], size[ok],
                  pre_n[ok], suf_n[ok], data)


@dataclass
class Bounds:
    """Per document, lower and upper bounds of what the word rules count, without running
    ``tokenize_chunk``: exact over the easy chunks; for a chunk that is not easy, only that its
    tokens split its characters (each character in one token, at least one token).

    Attributes:
        tokens, words, word_chars, alpha: ``(low, high)`` of ``Totals``' counts.
        stops: ``(low, high)`` of the distinct ``STOP_WORDS``: those among the easy chunks'
            tokens, and those also found inside the other chunks.
        exact: the documents without a chunk that is not easy (low == high, ``stops`` exact).
    """

    tokens: tuple[np.ndarray, np.ndarray]
    words: tuple[np.ndarray, np.ndarray]
    word_chars: tuple[np.ndarray, np.ndarray]
    alpha: tuple[np.ndarray, np.ndarray]
    stops: tuple[np.ndarray, np.ndarray]
    exact: np.ndarray

    def resolve(self, at: np.ndarray, w: Words, of: np.ndarray | None = None) -> None:
        """Set the counts of the texts ``at`` (a mask) to those of their tokens ``w`` (of
        the texts ``at``, or of all the texts; ``of``: pick ``at`` from them): exact there."""
        t = w.totals
        for name, exact in (("tokens", t.tokens), ("words", t.words),
                            ("word_chars", t.word_chars), ("alpha", t.alpha),
                            ("stops", w.stop_words())):
            lo, hi = (x.copy() for x in getattr(self, name))
            lo[at] = hi[at] = exact if of is None else exact[of]
            setattr(self, name, (lo, hi))
        self.exact[at] = True


def _counts_of(tokens: tuple[str, ...]) -> tuple[list[int], int]:
    """``Totals``' counts of one chunk's tokens, and their ``STOP_WORDS`` bits."""
    flags = [token_flags(t) for t in tokens]
    return [len(tokens), sum(1 for f in flags if f & WORD),
            sum(len(t) for t, f in zip(tokens, flags, strict=True) if f & WORD),
            sum(1 for f in flags if f & ALPHA)], functools.reduce(
        lambda bits, t: bits | _STOP_BITS.get(t, 0), tokens, 0)


# The risky cores as whole chunks: their counts (a special case the matcher merged inside one,
# which a neighbour could block, would make them unknown: there is none, checked here).
_RISKY_TOKENS = [_chunk(c) for c in _RISKY_CORES.to_pylist()]
assert not any(merged for _, merged in _RISKY_TOKENS)
_RISKY_COUNTS = np.array([_counts_of(t)[0] for t, _ in _RISKY_TOKENS],
                         dtype=np.int64).reshape(-1, 4)
_RISKY_STOPS = np.array([_counts_of(t)[1] for t, _ in _RISKY_TOKENS], dtype=np.int64)

# Per byte: 1 if an ASCII character that is datatrove punctuation (a token of only these is
# not a word), 2 if an ASCII letter.
_BYTE_CLASS = np.array([(1 if b < 128 and chr(b) in PUNCTUATION else 0)
                        + (2 if chr(b).isascii() and chr(b).isalpha() else 0)
                        for b in range(256)], dtype=np.uint8)


def _run_count(arr: pa.Array, pattern: str) -> np.ndarray:
    """Per string, how many (non-overlapping) matches of the RE2 ``pattern`` it has."""
    return _np(pc.count_substring_regex(arr, pattern))


def _doc_sums(doc: np.ndarray, values: np.ndarray, n_docs: int) -> np.ndarray:
    """Per document, the column sums of ``values`` (``(len(doc), k)`` integers) over its
    entries (``doc``: non-decreasing)."""
    ends = np.searchsorted(doc, np.arange(n_docs + 1), "left")
    some = ends[1:] > ends[:-1]
    out = np.zeros((n_docs, values.shape[1]), dtype=np.int64)
    if some.any():
        out[some] = np.add.reduceat(values, ends[:-1][some], axis=0, dtype=np.int64)
    return out


def bounds(c: Chunks, line_doc: np.ndarray, n_docs: int) -> Bounds:
    """``Bounds`` of each document of a batch (``line_doc``: per line, its document)."""
    n = len(c.distinct)
    lo = np.zeros((n, 4), dtype=np.int64)  # tokens, words, word chars, alpha
    hi = np.zeros((n, 4), dtype=np.int64)
    # Easy chunks: a core (a word with a letter) and one-character prefixes and suffixes.
    k = len(c.easy)
    core_len = _np(pc.binary_length(c.core))
    affix = np.zeros((k, 2), dtype=np.int64)  # words, alpha among the affixes
    for from_, n_part in ((c.first, c.pre_n), (c.first + c.size - c.suf_n, c.suf_n)):
        if n_part.any():
            fl = _BYTE_FLAGS[c.data[_ragged(from_, n_part)]]
            owner = np.repeat(np.arange(k), n_part)
            affix[:, 0] += np.bincount(owner, weights=(fl & WORD) > 0, minlength=k).astype(
                np.int64)
            affix[:, 1] += np.bincount(owner, weights=(fl & ALPHA) > 0, minlength=k).astype(
                np.int64)
    lo[c.easy] = hi[c.easy] = np.stack([c.pre_n + 1 + c.suf_n, 1 + affix[:, 0],
                                        core_len + affix[:, 0], 1 + affix[:, 1]], axis=1)
    # The others: every character is in one token; a word has a character other than
    # punctuation, an alpha token a letter (ASCII chunks; others only the character count).
    hard = c.hard
    others = c.distinct.filter(pa.array(hard))
    chars = _np(pc.utf8_length(others))
    is_ascii = _mask(pc.string_is_ascii(others))
    # Per ASCII chunk, its characters that are not punctuation, and its letters (from a table
    # of the bytes: in an ASCII chunk each byte is a character).
    byte_class = _BYTE_CLASS[np.frombuffer(raw_bytes(others), dtype=np.uint8)]
    cum = np.zeros((len(byte_class) + 1, 2), dtype=np.int64)
    np.cumsum(np.stack([byte_class & 1, byte_class >> 1], axis=1), axis=0, out=cum[1:])
    offsets = byte_offsets(others)
    per_chunk = cum[offsets[1:]] - cum[offsets[:-1]]
    plain = np.where(is_ascii, chars - per_chunk[:, 0], 0)
    letters = np.where(is_ascii, per_chunk[:, 1], 0)
    lo[hard] = np.stack([np.ones(len(chars), dtype=np.int64), plain > 0, plain, letters > 0],
                        axis=1)
    hi[hard] = np.stack([chars, np.where(is_ascii, plain, chars),
                         np.where(is_ascii & (plain == 0), 0, chars),
                         np.where(is_ascii, letters, chars)], axis=1)
    # In an ASCII chunk, only a special case splits a run of letters (and none a run of digits,
    # checked below): without a letter run a special case could reach, each letter or digit run
    # is inside one token, so a token with a letter or digit (a word) holds at least one run.
    runs = pc.split_pattern_regex(others, "[^A-Za-z]+")
    pieces = pc.list_flatten(runs)
    risky = np.bincount(_np(pc.list_parent_indices(runs)), minlength=len(chars),
                        weights=_mask(pc.is_in(pieces, value_set=_RISKY_CORES))) > 0
    letter_runs = _run_count(others, "[A-Za-z]+")
    alnum_runs = letter_runs + _run_count(others, "[0-9]+")
    tight = np.flatnonzero(hard)[is_ascii & ~risky]
    sel = (is_ascii & ~risky)
    hi[tight, 0] = alnum_runs[sel] + (chars - plain)[sel]
    hi[tight, 1] = alnum_runs[sel]
    hi[tight, 3] = letter_runs[sel]
    # Unless they are one of the letter chunks a special case could reach (common words:
    # "the", "a", "is"), whose counts are known.
    known = _np(pc.index_in(others, value_set=_RISKY_CORES).fill_null(-1))
    at = np.flatnonzero(hard)[known >= 0]
    known = known[known >= 0]
    lo[at] = hi[at] = _RISKY_COUNTS[known]
    hard[at] = False
    doc = np.asarray(line_doc, dtype=np.int64)[c.chunk_line]
    # Per document, the sums over its chunks: the lows over every chunk; the highs differ only
    # for the chunks still unknown (few), so only theirs are added.
    low = _doc_sums(doc, lo[c.occ], n_docs)
    at_unknown = np.flatnonzero(hard[c.occ])
    u_doc, u_occ = doc[at_unknown], c.occ[at_unknown]
    high = low + _doc_sums(u_doc, (hi - lo)[u_occ], n_docs)
    per = [[low[:, j] for j in range(4)], [high[:, j] for j in range(4)]]
    exact = np.bincount(u_doc, minlength=n_docs) == 0
    stop = _np(pc.index_in(c.core, value_set=_STOP_ARRAY).fill_null(-1))
    chunk_bits = np.zeros(n, dtype=np.int64)
    chunk_bits[c.easy[stop >= 0]] = 1 << stop[stop >= 0]
    chunk_bits[at] = _RISKY_STOPS[known]
    doc_bits = np.zeros(n_docs, dtype=np.int64)
    has = np.flatnonzero(chunk_bits[c.occ])
    np.bitwise_or.at(doc_bits, doc[has], chunk_bits[c.occ[has]])
    stops_lo = np.bitwise_count(doc_bits.astype(np.uint64)).astype(np.int64)
    # A token of a chunk is a piece of it: a stop word can only come from a chunk holding it.
    maybe = np.zeros(n, dtype=np.int64)
    unknown = np.flatnonzero(hard)
    if len(unknown):
        pieces = c.distinct.take(pa.array(unknown))
        for word, bit in _STOP_BITS.items():
            maybe[unknown] |= np.where(_mask(pc.match_substring(pieces, word)), bit, 0)
    has = np.flatnonzero(maybe[c.occ])
    np.bitwise_or.at(doc_bits, doc[has], maybe[c.occ[has]])
    stops_hi = np.bitwise_count(doc_bits.astype(np.uint64)).astype(np.int64)
    return Bounds(*zip(per[0], per[1], strict=True), (stops_lo, stops_hi), exact)


def words(lines: pa.Array, line_doc: np.ndarray, n_docs: int,
          split: Chunks | None = None) -> Words:
    """The tokens of a batch's lines (``tokenize`` of each line, in order).

    Args:
        lines: the lines (no ``"\\n"`` in them), in document order.
        line_doc: per line, its document (non-decreasing).
        n_docs: documents in the batch.
        split: ``chunks(lines)``, if already made.

    Returns:
        The tokens per distinct chunk and the chunks' occurrences.
    """
    c = split if split is not None else chunks(lines)
    chunk_line, occ, distinct = c.chunk_line.copy(), c.occ.copy(), c.distinct
    easy, core, first, size, pre_n, suf_n, data = (c.easy, c.core, c.first, c.size, c.pre_n,
                                                   c.suf_n, c.data)
    hard = np.flatnonzero(c.hard)
    hard_tokens = [_chunk(t) for t in distinct.take(pa.array(hard, pa.int64())).to_pylist()]
    n_units = len(distinct)

    # Lines where a chunk the matcher merged inside has a neighbour a match could run into:
    # the whole line is one unit.
    merged = hard[np.array([m for _, m in hard_tokens], dtype=bool)]
    token_lists = [t for t, _ in hard_tokens]
    if len(merged):
        whole = _entangled(distinct, occ, chunk_line, merged)
        if len(whole):
            token_lists += [tuple(tokenize(t)) for t in lines.take(pa.array(whole)).to_pylist()]
            hard = np.r_[hard, n_units + np.arange(len(whole))]
            in_whole = np.isin(chunk_line, whole)
            lead = in_whole & np.r_[True, chunk_line[1:] != chunk_line[:-1]]
            occ[lead] = n_units + np.searchsorted(whole, chunk_line[lead])
            keep = ~in_whole | lead
            occ, chunk_line = occ[keep], chunk_line[keep]
            n_units += len(whole)

    count = np.zeros(n_units, dtype=np.int64)
    count[easy] = pre_n + 1 + suf_n
    count[hard] = [len(t) for t in token_lists]
    start = np.zeros(n_units + 1, dtype=np.int64)
    np.cumsum(count, out=start[1:])
    total = int(start[-1])
    ids = np.zeros(total, dtype=np.int64)
    lengths = np.ones(total, dtype=np.int64)
    flags = np.zeros(total, dtype=np.int8)
    stops = np.zeros(total, dtype=np.int64)

    # One-character prefixes and suffixes of the easy chunks: their byte is their id.
    for from_, n_part, at in ((first, pre_n, start[easy]),
                              (first + size - suf_n, suf_n, start[easy] + pre_n + 1)):
        if n_part.any():
            byte = data[_ragged(from_, n_part)].astype(np.int64)
            pos = _ragged(at, n_part)
            ids[pos] = byte
            flags[pos] = _BYTE_FLAGS[byte]

    # The cores (letters): word and alpha tokens, stop words among them.
    core_at = start[easy] + pre_n
    core_len = _np(pc.binary_length(core))
    lengths[core_at] = core_len
    flags[core_at] = WORD | ALPHA
    stop = _np(pc.index_in(core, value_set=_STOP_ARRAY).fill_null(-1))
    stops[core_at[stop >= 0]] = 1 << stop[stop >= 0]

    # The other chunks' tokens, from tokenize_chunk.
    hard_at = _ragged(start[hard], count[hard])
    hard_flat = pa.array(list(itertools.chain.from_iterable(token_lists)),
                         type=pa.large_string())
    lengths[hard_at], flags[hard_at], stops[hard_at], byte_of = _token_columns(hard_flat)
    ids[hard_at] = byte_of

    # Ids: a one-character ASCII token's byte; 128 + its place among the other distinct tokens.
    single = core_len == 1
    if single.any():
        ids[core_at[single]] = np.frombuffer(raw_bytes(core.filter(pa.array(single))),
                                             dtype=np.uint8)
    longer = pa.concat_arrays([core.filter(pa.array(~single)).cast(pa.large_string()),
                               hard_flat.filter(pa.array(byte_of == 0))])
    ids[np.concatenate([core_at[~single], hard_at[byte_of == 0]])] = 128 + _np(
        longer.dictionary_encode().indices)
    return Words(n_docs, chunk_line, np.asarray(line_doc, dtype=np.int64), occ, start, ids,
                 lengths, flags, stops, c.line_words, c.line_longest)



def _check_special_cases() -> None:
    """What ``bounds`` rests on: no special case splits a run of digits, and those that split a
    run of letters have that run among the risky cores (checked on import)."""
    risky = set(_RISKY_CORES.to_pylist())
    for key, orth in _SPECIAL.items():
        for cut in list(itertools.accumulate(len(t) for t in orth))[:-1]:
            pair = key[cut - 1:cut + 1]
            if not pair.isascii() or not pair.isalnum():
                continue
            assert not pair.isdigit(), key
            if pair.isalpha():
                a, b = cut - 1, cut + 1
                while a > 0 and key[a - 1].isascii() and key[a - 1].isalpha():
                    a -= 1
                while b < len(key) and key[b].isascii() and key[b].isalpha():
                    b += 1
                assert key[a:b] in risky, key



def _first_codes(item: tuple) -> list[int]:
    """The code points a parsed regex item (``sre_parse``) can start a match with."""
    op, arg = item
    if op == sre_constants.LITERAL:
        return [arg]
    if op == sre_constants.IN:
        codes: list[int] = []
        for kind, value in arg:
            assert kind in (sre_constants.LITERAL, sre_constants.RANGE), kind
            codes += [value] if kind == sre_constants.LITERAL else range(value[0], value[1] + 1)
        return codes
    if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
        assert arg[0] >= 1, arg
        return _first_codes(arg[2][0])
    if op == sre_constants.SUBPATTERN:
        return _first_codes(arg[3][0])
    assert op == sre_constants.BRANCH, op
    return [c for branch in arg[1] for c in _first_codes(branch[0])]


def _check_infix_starts() -> None:
    """What ``_INFIX_AT`` rests on: each alternative of the infix pattern matches at least one
    character, and its first is one ``_MAYBE_INFIX`` matches (checked on import)."""
    for alternative in _alternatives(TABLES["infix"]):
        parsed = sre_parse.parse(alternative)
        assert parsed.getwidth()[0] >= 1, alternative
        first = next(it for it in parsed
                     if it[0] not in (sre_constants.ASSERT, sre_constants.ASSERT_NOT))
        assert all(_MAYBE_INFIX.match(chr(c)) for c in _first_codes(first)), alternative


_check_special_cases()
_check_infix_starts()
