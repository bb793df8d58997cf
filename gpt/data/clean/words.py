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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt.data.clean.arrow import raw_bytes

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


def _prefix_len(s: str) -> int:
    m = _PREFIX(s)
    return m.end() - m.start() if m else 0


def _suffix_len(s: str) -> int:
    m = _SUFFIX(s)
    return m.end() - m.start() if m else 0


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
        elif _URL(s):
            out.append(s)
        else:
            start = 0
            for m in _INFIX(s):
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
_MATCH_LENGTHS = sorted({len(p) for p in _MATCHED if len(p) > 1})
_MATCH_FIRST = frozenset(p[0] for p in _MATCHED if len(p) > 1)
_NON_SPACE = re.compile(r"\S+")


def _special_spans(tokens: list[str], joins: list[str | None]) -> tuple[list[str], bool]:
    """The matcher over a run of tokens; ``joins[i]`` is what separates token ``i`` from the one
    before: "" (same chunk), " " (one space) or ``None`` (other whitespace: spaCy has a
    whitespace token there, so nothing matches across it). Returns the tokens and whether a
    special case applied."""
    found = [(i, i + n) for i, t in enumerate(tokens) if t in _MATCH_FIRST
             for n in _MATCH_LENGTHS if i + n <= len(tokens) and tuple(tokens[i:i + n]) in
             _MATCHED and all(joins[k] is not None for k in range(i + 1, i + n))]
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


def _chunk_affixes(chunk: str) -> list[str]:
    return list(_SPECIAL[chunk]) if chunk in _SPECIAL else _affixes(chunk)


@functools.lru_cache(maxsize=1 << 18)
def _chunk(chunk: str) -> tuple[tuple[str, ...], bool]:
    tokens = _chunk_affixes(chunk)
    if len(tokens) < 2:
        return tuple(tokens), False
    out, merged = _special_spans(tokens, [""] * len(tokens))
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
        chunk = _chunk_affixes(m.group())
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


# The chunks tokenized in bulk: ASCII letters (with "_" inside), each prefix and suffix a single
# punctuation character that spaCy always splits off on its own, a suffix "." only where spaCy
# splits it (after a lowercase letter, two capitals, or a split-off character), no special case
# near. ``_PRE_CHARS``/``_SUF_CHARS`` are found from spaCy's patterns.
_ASCII_PUNCT = "".join(c for c in map(chr, range(33, 127)) if not c.isalnum())


def _splits_last(s: str) -> bool:
    """Whether spaCy's suffix pattern splits off the last character of ``s`` alone."""
    m = _SUFFIX(s)
    return m is not None and m.start() == len(s) - 1


_PRE_CHARS = "".join(c for c in _ASCII_PUNCT if _prefix_len(c + "ab") == 1
                     and _prefix_len(c + c + "ab") == 1)
_SUF_CHARS = "".join(c for c in _ASCII_PUNCT if c != "." and all(
    _splits_last(s) for s in ("ab" + c, "AB" + c, "aB" + c, "a" + c + c, "a" + c + ".")))
_P, _S = re.escape(_PRE_CHARS), re.escape(_SUF_CHARS)
_EASY = (rf"^(?P<p>[{_P}]*)(?:"
         rf"(?P<c1>(?:[A-Za-z][A-Za-z_]*)?(?:[a-z]|[A-Z][A-Z]))(?P<s1>\.?(?:[{_S}]\.?)*)|"
         rf"(?P<c2>(?:(?:[A-Za-z][A-Za-z_]*)?[a-z_])?[A-Z])(?P<s2>(?:[{_S}]\.?)*))$")
# Cores a special case could reach (its letter runs): chunks with one go through tokenize_chunk.
_RISKY_CORES = pa.array(sorted({run for key in _SPECIAL for run in
                                re.findall(r"[A-Za-z](?:[A-Za-z_]*[A-Za-z])?", key)}))
# Special cases made only of the split-off characters (":)", "''"): chunks with one, likewise.
_PUNCT_SPECIALS = "|".join(re.escape(k) for k in _SPECIAL if len(k) > 1 and all(
    c in _PRE_CHARS + _SUF_CHARS + "." for c in k))
_STOP_ARRAY = pa.array(STOP_WORDS)
_STOP_BITS = {w: 1 << i for i, w in enumerate(STOP_WORDS)}
# Per ASCII byte: its flags as a one-character token.
_BYTE_FLAGS = np.array([token_flags(chr(b)) if b else 0 for b in range(128)], dtype=np.int8)


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


#: How ``words`` stores a chunk's tokens: lengths, flags, stop bits, the byte of each
#: one-character ASCII token (0 for the others), the others, and whether the matcher merged.
_Info = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...],
              tuple[str, ...], bool]


def _info(tokens: tuple[str, ...] | list[str], merged: bool) -> _Info:
    byte = tuple(ord(t) if len(t) == 1 and t < "\x80" else 0 for t in tokens)
    return (tuple(map(len, tokens)), tuple(map(token_flags, tokens)),
            tuple(_STOP_BITS.get(t, 0) for t in tokens), byte,
            tuple(t for t, b in zip(tokens, byte, strict=True) if not b), merged)


@functools.lru_cache(maxsize=1 << 18)
def _chunk_info(chunk: str) -> _Info:
    return _info(*_chunk(chunk))


def _ragged(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, vectorised."""
    total = int(counts.sum())
    return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(total)


def _np(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False).astype(np.int64)


def words(lines: pa.Array, line_doc: np.ndarray, n_docs: int) -> Words:
    """The tokens of a batch's lines (``tokenize`` of each line, in order).

    Args:
        lines: the lines (no ``"\\n"`` in them), in document order.
        line_doc: per line, its document (non-decreasing).
        n_docs: documents in the batch.

    Returns:
        The tokens per distinct chunk and the chunks' occurrences.
    """
    split = pc.ascii_split_whitespace(lines)  # normalised texts: all whitespace is ASCII
    chunks = pc.list_flatten(split)
    filled = pc.greater(pc.binary_length(chunks), 0)  # "" around leading whitespace, blank lines
    chunks = chunks.filter(filled)
    chunk_line = _np(pc.list_parent_indices(split).filter(filled))
    encoded = chunks.dictionary_encode()
    occ = _np(encoded.indices)
    distinct: pa.Array = encoded.dictionary
    line_words = np.bincount(chunk_line, minlength=len(lines))
    line_longest = np.zeros(len(lines), dtype=np.int64)
    np.maximum.at(line_longest, chunk_line, _np(pc.utf8_length(distinct))[occ])

    m = pc.extract_regex(distinct, _EASY)
    alt1 = pc.greater(pc.binary_length(m.field("c1")), 0)
    core = pc.if_else(alt1, m.field("c1"), m.field("c2"))
    is_easy = pc.and_kleene(pc.is_valid(m), pc.invert(pc.is_in(core, value_set=_RISKY_CORES)))
    if _PUNCT_SPECIALS:
        is_easy = pc.and_not_kleene(is_easy, pc.match_substring_regex(distinct, _PUNCT_SPECIALS))
    easy_mask = is_easy.fill_null(False)
    easy = np.flatnonzero(easy_mask.to_numpy(zero_copy_only=False))
    hard = np.setdiff1d(np.arange(len(distinct)), easy, assume_unique=True)
    pre = m.field("p").filter(easy_mask)
    suf = pc.if_else(alt1, m.field("s1"), m.field("s2")).filter(easy_mask)
    core = core.filter(easy_mask)
    hard_info = [_chunk_info(c) for c in distinct.filter(pc.invert(easy_mask)).to_pylist()]
    n_units = len(distinct)

    # Lines with a chunk the matcher merged inside: the whole line is one unit.
    merged = hard[np.array([info[5] for info in hard_info], dtype=bool)]
    if len(merged):
        whole = np.unique(chunk_line[np.isin(occ, merged)])
        if len(whole):
            line_text = lines.take(pa.array(whole)).to_pylist()
            hard_info += [_info(tokenize(t), False) for t in line_text]
            hard = np.r_[hard, n_units + np.arange(len(whole))]
            in_whole = np.isin(chunk_line, whole)
            lead = in_whole & np.r_[True, chunk_line[1:] != chunk_line[:-1]]
            occ[lead] = n_units + np.searchsorted(whole, chunk_line[lead])
            keep = ~in_whole | lead
            occ, chunk_line = occ[keep], chunk_line[keep]
            n_units += len(whole)

    pre_n = _np(pc.binary_length(pre))
    suf_n = _np(pc.binary_length(suf))
    count = np.zeros(n_units, dtype=np.int64)
    count[easy] = pre_n + 1 + suf_n
    count[hard] = [len(info[0]) for info in hard_info]
    start = np.zeros(n_units + 1, dtype=np.int64)
    np.cumsum(count, out=start[1:])
    total = int(start[-1])
    ids = np.zeros(total, dtype=np.int64)
    lengths = np.ones(total, dtype=np.int64)
    flags = np.zeros(total, dtype=np.int8)
    stops = np.zeros(total, dtype=np.int64)

    # One-character prefixes and suffixes of the easy chunks: their byte is their id.
    for part, n_part, at in ((pre, pre_n, start[easy]), (suf, suf_n, start[easy] + pre_n + 1)):
        if n_part.any():
            data = np.frombuffer(raw_bytes(part), dtype=np.uint8).astype(np.int64)
            pos = _ragged(at, n_part)
            ids[pos] = data
            flags[pos] = _BYTE_FLAGS[data]

    # The cores (letters): word and alpha tokens, stop words among them.
    core_at = start[easy] + pre_n
    core_len = _np(pc.binary_length(core))
    lengths[core_at] = core_len
    flags[core_at] = WORD | ALPHA
    stop = _np(pc.index_in(core, value_set=_STOP_ARRAY).fill_null(-1))
    stops[core_at[stop >= 0]] = 1 << stop[stop >= 0]

    # The other chunks' tokens, from tokenize_chunk.
    hard_at = _ragged(start[hard], count[hard])

    def column(k: int) -> np.ndarray:
        return np.fromiter(itertools.chain.from_iterable(info[k] for info in hard_info),
                           dtype=np.int64, count=len(hard_at))

    lengths[hard_at] = column(0)
    flags[hard_at] = column(1)
    stops[hard_at] = column(2)
    byte_of = column(3)
    ids[hard_at] = byte_of

    # Ids: a one-character ASCII token's byte; 128 + its place among the other distinct tokens.
    single = core_len == 1
    if single.any():
        ids[core_at[single]] = np.frombuffer(raw_bytes(core.filter(pa.array(single))),
                                             dtype=np.uint8)
    longer = pa.concat_arrays([
        core.filter(pa.array(~single)).cast(pa.large_string()),
        pa.array(list(itertools.chain.from_iterable(info[4] for info in hard_info)),
                 type=pa.large_string())])
    ids[np.concatenate([core_at[~single], hard_at[byte_of == 0]])] = 128 + _np(
        longer.dictionary_encode().indices)
    return Words(n_docs, chunk_line, np.asarray(line_doc, dtype=np.int64), occ, start, ids,
                 lengths, flags, stops, line_words, line_longest)
