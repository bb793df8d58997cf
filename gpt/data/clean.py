"""Cleaning: Unicode repair, quality filters, dedup and PII scrubbing over document frames.

Every input document comes out exactly once: either in ``kept`` (with its cleaned text) or in
``rejected`` with a reason. Reasons, checked in this order (the first that applies wins):

``duplicate_id``, ``invalid_utf8``, ``too_short``, ``too_long``, ``too_few_words``,
``too_many_words``, ``word_length``, ``symbol_ratio``, ``low_alpha``, ``line_punctuation``,
``repeated_lines``, ``duplicate_of=<id>``, ``near_duplicate_of=<id>``.

The quality filters follow Gopher (Rae et al. 2021) and FineWeb, with thresholds from the
``clean:`` section of ``params.yaml``. Results are deterministic: the same input gives the same
output, and kept documents stay in input order.

The work is columnar: a shard's texts are one Arrow string array, normalised with Arrow's
compute kernels (RE2 regexes, NFC) and measured with numpy over the UTF-8 bytes of the whole
batch (per-document counts are segment sums), so the per-document Python cost is gone. Each
step first asks whether the batch contains anything it would change (a substring test on the
raw bytes) and then touches only the rows that do. Only PII candidates (rows where a cheap,
vectorised pre-filter finds something a PII pattern could match) go through Python.
"""

from __future__ import annotations

import multiprocessing
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gpt.config import CleanConfig
from gpt.data.minhash import minhash_signatures, near_duplicates
from gpt.data.pii import PII_PREFILTERS, scrub_pii
from gpt.data.sources import DOC_COLUMNS
from gpt.errors import DataError

REJECTED_COLUMNS = ["doc_id", "source", "name", "reason", "excerpt"]
EXCERPT_CHARS = 200
REPLACEMENT_CHAR = "\ufffd"

#: Quality reasons by code (0 = passed), in the order they are checked.
QUALITY_REASONS = ("", "invalid_utf8", "too_short", "too_long", "too_few_words",
                   "too_many_words", "word_length", "symbol_ratio", "low_alpha",
                   "line_punctuation", "repeated_lines")
_CODE = {name: code for code, name in enumerate(QUALITY_REASONS)}

#: Texts per batch are cut at about this many bytes (numpy temporaries stay in cache).
_BATCH_BYTES = 4 << 20

# Lone surrogates cannot be encoded as UTF-8: they become U+FFFD (so invalid_utf8 sees them).
_SURROGATES = re.compile("[\ud800-\udfff]")

# --- Unicode normalisation (RE2 patterns for Arrow) ---------------------------------------------


def _chars(*ranges: tuple[int, int]) -> str:
    return "".join(chr(c) for lo, hi in ranges for c in range(lo, hi + 1))


# Line separators other than "\n" and "\r" (CR and CRLF are replaced first).
_NEWLINE_CHARS = _chars((0x0B, 0x0C), (0x85, 0x85), (0x2028, 0x2029))
# C0/C1 controls except \t and \n, DEL, zero-width space, BOM/ZWNBSP.
_CONTROL_CHARS = _chars((0x00, 0x08), (0x0E, 0x1F), (0x7F, 0x84), (0x86, 0x9F), (0x200B, 0x200B),
                        (0xFEFF, 0xFEFF))
# Unicode spaces that are not ASCII space (NBSP, en/em spaces, ideographic space ...).
_ODD_SPACE_CHARS = _chars((0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A), (0x202F, 0x202F),
                          (0x205F, 0x205F), (0x3000, 0x3000))


def _re2_class(chars: str) -> str:
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in chars) + "]"


_NEWLINES = _re2_class(_NEWLINE_CHARS)
_CONTROLS = _re2_class(_CONTROL_CHARS)
_ODD_SPACES = _re2_class(_ODD_SPACE_CHARS)
_ANY_ODD = _re2_class(_ODD_SPACE_CHARS + _NEWLINE_CHARS + _CONTROL_CHARS)
_ASCII_CONTROL_BYTES = bytes(ord(c) for c in _CONTROL_CHARS if c.isascii())
_TRAILING_WS = "[ \t]+\n"
_BLANK_RUNS = "\n\n\n+"


def _mask(n: int, rows: np.ndarray) -> pa.Array:
    """A boolean Arrow mask of length ``n``, true at ``rows``."""
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return pa.array(mask)


def _rows(arr: pa.Array, mask: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``arr`` with ``fn`` applied to the rows where ``mask`` is true (the others untouched)."""
    if not pc.any(mask).as_py():
        return arr
    return pc.replace_with_mask(arr, mask, fn(arr.filter(mask)))


def _sub(pattern: str, repl: str) -> Callable[[pa.Array], pa.Array]:
    return lambda a: pc.replace_substring_regex(a, pattern, repl)


def _raw(arr: pa.Array) -> bytes:
    """The UTF-8 bytes of all of ``arr``'s texts, back to back (``_offsets`` index into it)."""
    offsets = _buffer_offsets(arr)
    start, stop = int(offsets[0]), int(offsets[-1])
    data = arr.buffers()[2]
    return b"" if data is None or start == stop else memoryview(data)[start:stop].tobytes()


def _buffer_offsets(arr: pa.Array) -> np.ndarray:
    """``len(arr) + 1`` byte offsets of a (large) string array's values in its data buffer."""
    dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    width = np.dtype(dtype).itemsize
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr) + 1,
                         offset=arr.offset * width).astype(np.int64)


def _offsets(arr: pa.Array) -> np.ndarray:
    """Where each text starts in ``_raw(arr)``, and (last entry) where the last one ends."""
    offsets = _buffer_offsets(arr)
    return offsets - offsets[0]


def _text_at(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The text each byte position (in ``_raw``) falls in, given ``_offsets``."""
    return np.searchsorted(offsets, positions, "right") - 1


def normalize_batch(texts: pa.Array) -> pa.Array:
    """Repair and normalise many documents at once (see ``normalize_text``).

    Args:
        texts: an Arrow (large) string array without nulls, valid UTF-8.

    Returns:
        A ``large_string`` array of the cleaned texts, in the same order.
    """
    arr = texts.cast(pa.large_string())
    raw = _raw(arr)

    def adopt(new: pa.Array) -> None:
        nonlocal arr, raw
        if new is not arr:  # later presence tests must see the new bytes
            arr, raw = new, _raw(new)

    def step(mask: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> None:
        adopt(_rows(arr, mask, fn))

    if b"\r" in raw:  # memchr: much faster than the two-byte searches below
        step(_containing(arr, raw, b"\r"), lambda a: pc.replace_substring(
            pc.replace_substring(a, "\r\n", "\n"), "\r", "\n"))
    if not raw.isascii():
        step(pc.invert(pc.string_is_ascii(arr)), _normalize_unicode)
    # ASCII rows (the rest are done): vertical tab, form feed and other control characters.
    if b"\x0b" in raw or b"\x0c" in raw:
        step(_containing(arr, raw, b"\x0b", b"\x0c"), _sub(_NEWLINES, "\n"))
    if len(raw.translate(None, _ASCII_CONTROL_BYTES)) != len(raw):
        step(pc.match_substring_regex(arr, _CONTROLS), _sub(_CONTROLS, ""))
    adopt(_collapse_space_runs(arr, raw))
    nl, text = _newlines(arr, raw)
    data = np.frombuffer(raw, dtype=np.uint8)
    offsets = _offsets(arr)
    before = data[np.maximum(nl - 1, 0)]
    trailing = (nl > offsets[text]) & ((before == ord(" ")) | (before == ord("\t")))
    step(_mask(len(arr), text[trailing]), _sub(_TRAILING_WS, "\n"))
    if trailing.any():  # "\n \n\n" may have just become "\n\n\n"
        nl, text = _newlines(arr, raw)
    third = (nl[2:] == nl[:-2] + 2) & (text[2:] == text[:-2])
    step(_mask(len(arr), text[2:][third]), _sub(_BLANK_RUNS, "\n\n"))
    return pc.utf8_trim_whitespace(arr)


def _collapse_space_runs(arr: pa.Array, raw: bytes) -> pa.Array:
    """Runs of spaces after a non-space become one space; indentation is left alone.

    ``(\\S)  +`` -> ``\\1 ``, done on the batch's bytes: find the double spaces, keep the first
    space of each run that follows a non-space byte, delete the rest, and rebuild the array.
    (Whitespace is only " ", "\\t" and "\\n" by now.)
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    offsets = _offsets(arr)
    space = data == ord(" ")
    pairs = np.flatnonzero(space[:-1] & space[1:])  # i: bytes i and i + 1 are spaces
    text = _text_at(offsets, pairs)
    pairs, text = pairs[pairs + 1 < offsets[1:][text]], text[pairs + 1 < offsets[1:][text]]
    if not len(pairs):
        return arr
    # A run's first pair starts at the run's first space; it counts when a non-space byte of
    # the same text comes before it.
    first = np.r_[True, pairs[1:] != pairs[:-1] + 1]
    before = data[np.maximum(pairs - 1, 0)]
    counts = first & (pairs > offsets[text]) & (before != ord(" ")) & (before != ord("\t")) \
        & (before != ord("\n"))
    run = np.cumsum(first) - 1
    drop = pairs[counts[np.flatnonzero(first)][run]] + 1
    if not len(drop):
        return arr
    keep = np.ones(len(data), dtype=bool)
    keep[drop] = False
    removed = np.bincount(_text_at(offsets, drop), minlength=len(arr))
    new_offsets = offsets - np.r_[0, np.cumsum(removed)]
    return pa.LargeStringArray.from_buffers(len(arr), pa.py_buffer(new_offsets),
                                            pa.py_buffer(data[keep].tobytes()))


def _newlines(arr: pa.Array, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Positions of "\\n" in ``raw`` (= ``_raw(arr)``) and the texts they are in."""
    nl = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == ord("\n"))
    return nl, _text_at(_offsets(arr), nl)


def _containing(arr: pa.Array, raw: bytes, *needles: bytes) -> pa.Array:
    """Which texts of ``arr`` (``raw`` = ``_raw(arr)``) contain one of ``needles``.

    A ``bytes.find`` loop that jumps to the next text after each hit: for needles that few
    texts contain, much faster than a kernel that looks at every text.
    """
    offsets = _offsets(arr)
    mask = np.zeros(len(arr), dtype=bool)
    for needle in needles:
        pos = raw.find(needle)
        while pos >= 0:
            row = int(_text_at(offsets, pos))
            end = int(offsets[row + 1])
            if pos + len(needle) <= end:  # not straddling two texts
                mask[row] = True
                pos = raw.find(needle, end)
            else:
                pos = raw.find(needle, pos + 1)
    return pa.array(mask)


def _normalize_unicode(arr: pa.Array) -> pa.Array:
    """The steps only non-ASCII texts need: spaces, newlines, controls, then NFC."""
    odd = pc.match_substring_regex(arr, _ANY_ODD)
    if pc.any(odd).as_py():
        for pattern, repl in ((_ODD_SPACES, " "), (_NEWLINES, "\n"), (_CONTROLS, "")):
            arr = _rows(arr, odd, _sub(pattern, repl))
    # After control removal, so a removed control cannot leave a decomposed pair behind. In
    # Python: Arrow's utf8_normalize(form="NFC") returns NFD in pyarrow 25 (checked here).
    return pa.array([t if unicodedata.is_normalized("NFC", t) else unicodedata.normalize("NFC", t)
                     for t in arr.to_pylist()], type=pa.large_string())


def normalize_text(text: str) -> str:
    """Repair and normalise one document's text.

    Strips the BOM and zero-width spaces, turns every newline variant into ``\\n``, removes
    control characters other than ``\\n`` and ``\\t``, turns lone surrogates into U+FFFD and
    Unicode spaces into ASCII spaces, applies NFC, collapses runs of spaces inside lines (not
    indentation), drops trailing whitespace and more than one blank line in a row, and strips
    the ends. The same code as the batch path (``normalize_batch``), for one text.

    Args:
        text: the raw text.

    Returns:
        The cleaned text.
    """
    if not text.isascii():
        text = _SURROGATES.sub(REPLACEMENT_CHAR, text)
    return normalize_batch(pa.array([text], type=pa.large_string()))[0].as_py()


# --- Quality features ---------------------------------------------------------------------------

# Byte classes (one bytes.translate over the batch): 0 other, 1 ASCII letter, 3 "#", 4 ASCII
# line-ending punctuation other than ".", 5 ".", 8 " ", 9 "\n", 10 "\t", 11 other ASCII
# whitespace. Whitespace classes are >= 8.
_LETTER, _HASH, _PUNCT, _DOT = 1, 3, 4, 5
_SPACE, _NEWLINE, _TAB, _OTHER_WS = 8, 9, 10, 11


def _byte_class(i: int) -> int:
    c = chr(i)
    if i >= 0x80:
        return 0
    if c.isalpha():
        return _LETTER
    return {"#": _HASH, ".": _DOT, " ": _SPACE, "\n": _NEWLINE, "\t": _TAB,
            "\r": _OTHER_WS, "\x0b": _OTHER_WS, "\x0c": _OTHER_WS}.get(
        c, _PUNCT if c in "!?:;\"')]}>" else 0)


_CLASS_TABLE = bytes(_byte_class(i) for i in range(256))
#: Line-ending punctuation of more than one byte: "…", "”", "’", "»" (UTF-8).
_PUNCT_MULTI = ("…", "”", "’", "»")
_MULTI_LAST_TABLE = bytes(int(any(m.encode()[-1] == i for m in (*_PUNCT_MULTI, "\ufffd")))
                          for i in range(256))
_ASCII_BYTES = bytes(range(0x80))


@dataclass
class _Features:
    """Per-document counts over a batch of normalised texts (numpy ``int64`` arrays)."""

    chars: np.ndarray
    words: np.ndarray
    word_chars: np.ndarray
    letters: np.ndarray
    symbols: np.ndarray
    lines: np.ndarray  # non-empty lines
    punct_lines: np.ndarray  # non-empty lines ending in punctuation
    invalid: np.ndarray  # U+FFFD characters


def _features(arr: pa.Array) -> _Features:
    """Counts for the filters, over the bytes of the whole batch at once."""
    n = len(arr)
    offsets = _offsets(arr)
    raw = _raw(arr)
    cls = np.frombuffer(raw.translate(_CLASS_TABLE), dtype=np.uint8)
    nbytes = offsets[1:] - offsets[:-1]
    nonempty = np.flatnonzero(nbytes > 0)
    starts = offsets[:-1][nonempty]

    # Segment sums accumulate in int32 (3x faster than int64 here) unless a text could overflow.
    acc = np.int32 if len(cls) < 2**31 else np.int64

    def per_doc(indicator: np.ndarray) -> np.ndarray:
        out = np.zeros(n, dtype=np.int64)
        if len(starts):
            out[nonempty] = np.add.reduceat(indicator.view(np.uint8), starts, dtype=acc)
        return out

    def per_doc_at(positions: np.ndarray) -> np.ndarray:  # for sparse indicators
        return np.bincount(_text_at(offsets, positions), minlength=n)[:n].astype(np.int64)

    ws = cls >= _SPACE
    newline = cls == _NEWLINE
    # A word starts at a non-space byte after a space byte, or at a document's first byte
    # (texts are stripped, so no document starts or ends with whitespace).
    word_start = np.zeros(len(cls), dtype=bool)
    np.greater(ws[:-1], ws[1:], out=word_start[1:])
    words = per_doc(word_start) + (nbytes > 0)
    # A line ends before "\n" or at a document's end; "\n\n" is a blank line.
    line_end = np.zeros(len(cls), dtype=bool)
    np.greater(newline[1:], newline[:-1], out=line_end[:-1])
    line_end[offsets[1:][nonempty] - 1] = True
    punct_end = (cls >= _PUNCT) & (cls <= _DOT)
    non_ascii = ~pc.string_is_ascii(arr).to_numpy(zero_copy_only=False)
    ellipsis_chars = invalid = np.zeros(n, dtype=np.int64)
    if non_ascii.any():
        data = np.frombuffer(raw, dtype=np.uint8)
        # Where a multi-byte character of interest could end (its last byte), then its other
        # bytes there.
        last = np.flatnonzero(np.frombuffer(raw.translate(_MULTI_LAST_TABLE), dtype=np.bool_))
        found = {}
        for mark in (*_PUNCT_MULTI, REPLACEMENT_CHAR):
            enc = mark.encode()
            at = last[(last >= len(enc) - 1) & (data[last] == enc[-1])]
            for k in range(1, len(enc)):
                at = at[data[at - k] == enc[-1 - k]]
            found[mark] = at
            if mark in _PUNCT_MULTI:
                punct_end[at] = True
        ellipsis_chars = per_doc_at(found["…"])
        invalid = per_doc_at(found[REPLACEMENT_CHAR])
    n_newlines = per_doc(newline)
    blanks = per_doc_at(np.flatnonzero(newline[:-1] & newline[1:]))
    chars = pc.utf8_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    letters = per_doc(cls == _LETTER)
    for i in np.flatnonzero(non_ascii).tolist():
        start, stop = int(offsets[i]), int(offsets[i + 1])
        others = raw[start:stop].translate(None, _ASCII_BYTES).decode("utf-8")  # non-ASCII only
        letters[i] += sum(map(str.isalpha, others))
    symbols = per_doc_at(np.flatnonzero(cls == _HASH)) + ellipsis_chars
    if b"..." in raw:
        symbols += _ellipses(cls, offsets, nonempty, per_doc_at, arr)
    return _Features(
        chars=chars,
        words=words,
        word_chars=chars - per_doc(ws),  # normalised: " ", "\t" and "\n" are all the whitespace
        letters=letters,
        symbols=symbols,
        lines=(n_newlines + 1 - blanks) * (nbytes > 0),
        punct_lines=per_doc(punct_end & line_end),
        invalid=invalid,
    )


def _ellipses(cls: np.ndarray, offsets: np.ndarray, nonempty: np.ndarray,
              per_doc_at: Callable[[np.ndarray], np.ndarray], arr: pa.Array) -> np.ndarray:
    """``str.count("...")`` per text: runs of three dots, from the byte classes."""
    dots = np.flatnonzero(cls == _DOT)
    triple = dots[:-2][(dots[1:-1] == dots[:-2] + 1) & (dots[2:] == dots[:-2] + 2)]
    text = _text_at(offsets, triple)
    triple = triple[triple + 2 < offsets[1:][text]]  # a run may not reach into the next text
    counts = per_doc_at(triple)
    # Overlapping triples overcount runs of four or more dots: count those texts exactly.
    quads = triple[1:][triple[1:] == triple[:-1] + 1]
    for i in np.unique(_text_at(offsets, quads)).tolist():
        counts[i] = arr[i].as_py().count("...")
    return counts


def _quality_codes(arr: pa.Array, f: _Features, cfg: CleanConfig) -> np.ndarray:
    """The first quality filter each (normalised) text fails, as a ``QUALITY_REASONS`` code."""
    with np.errstate(divide="ignore", invalid="ignore"):
        words = np.maximum(f.words, 1)
        mean_len = f.word_chars / words
        conditions = [
            f.invalid / np.maximum(f.chars, 1) > cfg.max_invalid_ratio,  # 0 in ASCII texts
            f.chars < cfg.min_chars,
            f.chars > cfg.max_chars,
            (f.words < cfg.min_words) | (f.words == 0),
            f.words > cfg.max_words,
            (mean_len < cfg.min_mean_word_length) | (mean_len > cfg.max_mean_word_length),
            f.symbols / words > cfg.max_symbol_ratio,
            f.letters / np.maximum(f.word_chars, 1) < cfg.min_alpha_ratio,
            f.punct_lines / np.maximum(f.lines, 1) < cfg.min_punct_line_fraction,
        ]
    codes = np.select(conditions, np.arange(1, len(conditions) + 1, dtype=np.int8), 0)
    codes = codes.astype(np.int8)
    multi = np.flatnonzero((codes == 0) & (f.lines > 1))
    if len(multi):
        repeated = _repeated_line_fraction(_pick(arr, multi), f.lines[multi])
        codes[multi[repeated > cfg.max_dup_line_fraction]] = _CODE["repeated_lines"]
    return codes


def _pick(arr: pa.Array | pa.ChunkedArray, rows: np.ndarray) -> pa.Array | pa.ChunkedArray:
    """``arr[rows]`` for increasing ``rows`` (a filter: Arrow's take is slow on strings)."""
    return arr if len(rows) == len(arr) else arr.filter(_mask(len(arr), rows))


def _repeated_line_fraction(arr: pa.Array, lines: np.ndarray) -> np.ndarray:
    """Per text, the fraction of its non-empty lines that repeat an earlier line of it."""
    split = pc.split_pattern(arr, "\n")
    flat = pc.list_flatten(split)
    parent = pc.list_parent_indices(split).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = pc.greater(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False)
    line_id = flat.dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)
    width = int(line_id.max(initial=0)) + 1
    pairs = pd.unique(parent[keep] * width + line_id[keep])  # hash-based: faster than np.unique
    distinct = np.bincount(pairs // width, minlength=len(lines))
    return (lines - distinct) / lines


def _pii_kinds(arr: pa.Array, kinds: tuple[str, ...],
               rows: np.ndarray) -> dict[int, tuple[str, ...]]:
    """For each of ``rows`` where a PII pattern could match, the kinds that could.

    One pass of all the kinds' pre-filters over the rows, then each kind's pre-filter over the
    few that matched; ``scrub_pii`` decides.
    """
    if not kinds or not len(rows):
        return {}
    pattern = "|".join(f"(?:{PII_PREFILTERS[k]})" for k in kinds)
    hit = pc.match_substring_regex(_pick(arr, rows), pattern).to_numpy(
        zero_copy_only=False)
    rows = rows[hit]
    if not len(rows):
        return {}
    sub = _pick(arr, rows)
    found: dict[int, list[str]] = {}
    for kind in kinds:
        match = pc.match_substring_regex(sub, PII_PREFILTERS[kind]).to_numpy(zero_copy_only=False)
        for i in rows[match].tolist():
            found.setdefault(i, []).append(kind)
    return {i: tuple(ks) for i, ks in found.items()}


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


def _arrow(column: pd.Series) -> pa.ChunkedArray:
    """A validated string column as Arrow ``large_string`` chunks (no copy when possible)."""
    arr = pa.array(column, type=pa.large_string())
    return arr if isinstance(arr, pa.ChunkedArray) else pa.chunked_array([arr])


def _utf8_bytes(texts: pa.Array | pa.ChunkedArray) -> int:
    """Total UTF-8 size of a string array."""
    return int(pc.sum(pc.binary_length(texts)).as_py() or 0) if len(texts) else 0


@dataclass
class _Part:
    """Per-document results of the filters for one shard (documents in shard order)."""

    cleaned: pa.ChunkedArray  # large_string
    codes: np.ndarray  # QUALITY_REASONS codes
    keys: np.ndarray  # uint64 per cleaned text: equal texts have equal keys (see _text_keys)
    pii: dict[int, dict[str, int]]  # index in shard -> kind -> count (documents that passed)
    sigs: np.ndarray | None  # signatures of the documents that passed, in order


_KEY_MULT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9],
                     dtype=np.uint64)


def _text_keys(arr: pa.Array) -> np.ndarray:
    """A cheap key per text from its length and first and last 8 bytes.

    Equal texts have equal keys, so only texts that share a key can be exact duplicates;
    exact dedup compares the texts themselves for those few.
    """
    offsets = _offsets(arr)
    data = np.frombuffer(_raw(arr) + bytes(8), dtype=np.uint8)
    nbytes = offsets[1:] - offsets[:-1]
    k = np.arange(8)
    head = data[offsets[:-1, None] + k] * (k < nbytes[:, None])
    tail_at = offsets[1:, None] - 8 + k
    tail = data[np.maximum(tail_at, 0)] * (tail_at >= offsets[:-1, None])
    key = nbytes.astype(np.uint64) * _KEY_MULT[0]
    key ^= np.ascontiguousarray(head, dtype=np.uint8).view(np.uint64)[:, 0] * _KEY_MULT[1]
    key ^= np.ascontiguousarray(tail, dtype=np.uint8).view(np.uint64)[:, 0] * _KEY_MULT[2]
    return key


def _batches(arr: pa.Array) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``_BATCH_BYTES`` each."""
    offsets = _offsets(arr)
    cuts = np.searchsorted(offsets, np.arange(0, offsets[-1], _BATCH_BYTES), "right")
    bounds = sorted({0, len(arr), *(int(c) - 1 for c in cuts if 0 < c - 1 < len(arr))})
    return list(zip(bounds[:-1], bounds[1:], strict=True))


@contextmanager
def _system_allocator() -> Iterator[None]:
    """Allocate Arrow memory with malloc while cleaning.

    The batches allocate and free many short-lived buffers of a few MB. Arrow's default
    allocator (mimalloc) hands their pages back to the kernel soon after each free and faults
    them in again for the next batch: measured here, that was 0.3 to 0.9 s of system time per
    33 MB (up to 40 % of the work). With malloc it was about 0.1 s.
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _filter_part(texts: pa.ChunkedArray, cfg: CleanConfig) -> _Part:
    """Normalise, filter and scrub one shard; sign the survivors when near-dedup is on."""
    with _system_allocator():
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
            f = _features(arr)
            codes = _quality_codes(arr, f, cfg)
            candidates = _pii_kinds(arr, kinds, np.flatnonzero(codes == 0))
            if candidates:
                rows = sorted(candidates)
                scrubbed = []
                for i in rows:
                    text, counts = scrub_pii(arr[i].as_py(), candidates[i])
                    scrubbed.append(text)
                    if counts:
                        pii[base + lo + i] = counts
                arr = pc.replace_with_mask(arr, _mask(len(arr), np.array(rows)),
                                           pa.array(scrubbed, type=pa.large_string()))
            pieces.append(arr)
            code_parts.append(codes)
            key_parts.append(_text_keys(arr))
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


#: mapper(fn, jobs) -> [fn(job) for job in jobs], possibly on other processes or machines.
Mapper = Callable[[Callable[[tuple[pa.ChunkedArray, CleanConfig]], Any], list], list]


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
    with _system_allocator():
        return _clean_shards(shards, cfg, workers, mapper)


def _clean_shards(shards: list[pd.DataFrame], cfg: CleanConfig, workers: int,
                  mapper: Mapper | None) -> CleanResult:
    frames = [_validated(s) for s in shards]
    frame = (pd.concat(frames, ignore_index=True) if frames
             else _validated(pd.DataFrame(columns=DOC_COLUMNS)))
    n = len(frame)
    ids = frame["doc_id"].to_numpy(dtype=object)
    originals = _arrow(frame["text"])
    codes = np.zeros(n, dtype=np.int8)
    dup_id = frame["doc_id"].duplicated().to_numpy()
    # Work units: each shard minus its duplicate-id rows, as positions into ``frame``.
    bounds = np.cumsum([0] + [len(f) for f in frames])
    units = [np.flatnonzero(~dup_id[lo:hi]) + lo for lo, hi in zip(bounds[:-1], bounds[1:],
                                                                    strict=True)]
    units = [u for u in units if len(u)]
    jobs = [(_pick(originals, u), cfg) for u in units]
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
    # ``order``: the rows that were filtered, increasing (units are, and come in shard order);
    # ``cleaned`` and ``keys`` are aligned with it. Duplicate-id rows have no cleaned text.
    order = np.concatenate(units) if units else np.zeros(0, dtype=np.int64)
    cleaned = pa.chunked_array([c for part in parts for c in part.cleaned.chunks],
                               type=pa.large_string())
    keys = np.concatenate([part.keys for part in parts]) if parts else np.zeros(0, np.uint64)
    at = np.full(n, -1, dtype=np.int64)  # row -> position in ``order``
    at[order] = np.arange(len(order))
    for unit, part in zip(units, parts, strict=True):
        codes[unit] = part.codes
        pii_at.update({int(unit[k]): c for k, c in part.pii.items()})
        if part.sigs is not None:
            sig_rows.append(part.sigs)
    reasons = np.array(QUALITY_REASONS, dtype=object)[codes]
    reasons[dup_id] = "duplicate_id"
    passing = np.flatnonzero((codes == 0) & ~dup_id)
    reached_dedup = len(passing)
    duplicates = 0
    copies: dict[int, list[int]] = {}  # first kept -> its exact duplicates
    if cfg.exact_dedup and len(passing):
        # Only texts that share a key can be equal: compare those.
        shared = pd.Series(keys[at[passing]]).duplicated(keep=False).to_numpy()
        rows = passing[shared]
        first_of: dict[str, int] = {}
        for i, text in zip(rows.tolist(), _pick(cleaned, at[rows]).to_pylist(), strict=True):
            first = first_of.setdefault(text, i)
            if first != i:
                reasons[i] = f"duplicate_of={ids[first]}"
                copies.setdefault(first, []).append(i)
                duplicates += 1
    if cfg.near_dedup and len(passing):
        sigs = np.concatenate(sig_rows) if sig_rows else np.empty((0, cfg.near_dedup_num_perm))
        alive = reasons[passing] == ""
        rows = passing[alive]
        of = near_duplicates(sigs[alive], cfg.near_dedup_threshold,
                             _ArrowTexts(_pick(cleaned, at[rows])), cfg.near_dedup_ngram)
        for j in np.flatnonzero(of >= 0).tolist():
            reason = f"near_duplicate_of={ids[rows[of[j]]]}"
            reasons[rows[j]] = reason
            duplicates += 1
            # Exact copies of a document that turned out a near duplicate point past it, at
            # the kept one.
            for copy in copies.get(int(rows[j]), ()):
                reasons[copy] = reason
    keep = reasons == ""
    pii: dict[str, int] = {}
    for i, counts in pii_at.items():
        if keep[i]:
            for kind, c in counts.items():
                pii[kind] = pii.get(kind, 0) + c
    kept_texts = cleaned.filter(pa.array(keep[order])) if len(order) else cleaned
    return _assemble(frame, kept_texts, reasons, originals, reached_dedup, duplicates, pii)


class _ArrowTexts(Sequence[str]):
    """Texts of an Arrow array as a sequence, converted to ``str`` only when read."""

    def __init__(self, arr: pa.Array | pa.ChunkedArray) -> None:
        self._arr = arr

    def __len__(self) -> int:
        return len(self._arr)

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self._arr[i].as_py()


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


def _str_series(arr: pa.Array | pa.ChunkedArray) -> pd.Series:
    return pd.Series(arr.cast(pa.large_string()), dtype="str")


def _assemble(frame: pd.DataFrame, kept_texts: pa.ChunkedArray, reasons: np.ndarray,
              originals: pa.ChunkedArray, reached_dedup: int, duplicates: int,
              pii: dict[str, int]) -> CleanResult:
    keep = reasons == ""
    ids = ["doc_id", "source", "name"]
    kept = frame.loc[keep, ids].reset_index(drop=True)
    kept["text"] = _str_series(kept_texts)
    kept = kept[DOC_COLUMNS]
    rejected = frame.loc[~keep, ids].reset_index(drop=True)
    rejected["reason"] = pd.Series(reasons[~keep].tolist(), dtype="str")
    rejected["excerpt"] = _str_series(pc.utf8_slice_codeunits(
        originals.filter(pa.array(~keep)), 0, EXCERPT_CHARS))
    by_reason: dict[str, int] = {}
    for r in rejected["reason"].tolist():
        key = r.split("=", 1)[0]
        by_reason[key] = by_reason.get(key, 0) + 1
    stats = {
        "docs_in": len(frame),
        "docs_kept": len(kept),
        "docs_rejected": len(rejected),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "bytes_in": _utf8_bytes(originals),
        "bytes_out": _utf8_bytes(kept_texts),
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
