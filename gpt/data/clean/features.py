"""Per-document counts the cheapest quality filters judge, measured over a whole batch at once.

One ``bytes.translate`` maps every byte of the batch to a class (letter, space, newline,
punctuation ...); per-document counts are then segment sums over those classes, so no Python
code runs per document except for the few non-ASCII texts' letters. (The line rules count over
``lines.Lines``, the word rules over ``words.Words``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt.data.clean.arrow import byte_offsets, raw_bytes, text_at
from gpt.data.clean.normalize import REPLACEMENT_CHAR

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
class Features:
    """Per-document counts over a batch of normalised texts (numpy ``int64`` arrays)."""

    chars: np.ndarray
    word_chars: np.ndarray  # non-whitespace characters
    letters: np.ndarray
    hashes: np.ndarray  # "#"
    ellipses: np.ndarray  # "..." (str.count) and U+2026
    lines: np.ndarray  # non-empty lines
    punct_lines: np.ndarray  # non-empty lines ending in punctuation
    invalid: np.ndarray  # U+FFFD characters


class _Bytes:
    """A batch's bytes, their classes, and segment sums of indicators per document."""

    def __init__(self, arr: pa.Array) -> None:
        self.n = len(arr)
        self.offsets = byte_offsets(arr)
        self.raw = raw_bytes(arr)
        self.cls = np.frombuffer(self.raw.translate(_CLASS_TABLE), dtype=np.uint8)
        self.nbytes = self.offsets[1:] - self.offsets[:-1]
        self.nonempty = np.flatnonzero(self.nbytes > 0)
        self.starts = self.offsets[:-1][self.nonempty]
        # Segment sums accumulate in int32 (3x faster than int64 here) unless a text could
        # overflow.
        self.acc = np.int32 if len(self.cls) < 2**31 else np.int64

    def per_doc(self, indicator: np.ndarray) -> np.ndarray:
        """Per document, how many of its bytes ``indicator`` (a bool per byte) marks."""
        out = np.zeros(self.n, dtype=np.int64)
        if len(self.starts):
            out[self.nonempty] = np.add.reduceat(indicator.view(np.uint8), self.starts,
                                                 dtype=self.acc)
        return out

    def per_doc_at(self, positions: np.ndarray) -> np.ndarray:
        """Per document, how many of ``positions`` fall in it (for sparse indicators)."""
        return np.bincount(text_at(self.offsets, positions),
                           minlength=self.n)[:self.n].astype(np.int64)


def features(arr: pa.Array) -> Features:
    """Counts for the filters, over the bytes of the whole batch at once.

    Args:
        arr: normalised texts (``normalize_batch``), a ``large_string`` array.

    Returns:
        The counts, one entry per text.
    """
    b = _Bytes(arr)
    cls = b.cls
    ws = cls >= _SPACE
    newline = cls == _NEWLINE
    # A line ends before "\n" or at a document's end; "\n\n" is a blank line.
    line_end = np.zeros(len(cls), dtype=bool)
    np.greater(newline[1:], newline[:-1], out=line_end[:-1])
    line_end[b.offsets[1:][b.nonempty] - 1] = True
    punct_end = (cls >= _PUNCT) & (cls <= _DOT)
    non_ascii = ~pc.string_is_ascii(arr).to_numpy(zero_copy_only=False)
    ellipses = invalid = np.zeros(b.n, dtype=np.int64)
    if non_ascii.any():
        found = _multibyte_marks(b.raw)
        for mark in _PUNCT_MULTI:
            punct_end[found[mark]] = True
        ellipses = b.per_doc_at(found["\u2026"])
        invalid = b.per_doc_at(found[REPLACEMENT_CHAR])
    if b"..." in b.raw:
        ellipses = ellipses + _ellipses(b, arr)
    n_newlines = b.per_doc(newline)
    blanks = b.per_doc_at(np.flatnonzero(newline[:-1] & newline[1:]))
    chars = pc.utf8_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    letters = _letters(b, non_ascii)
    return Features(
        chars=chars,
        word_chars=chars - b.per_doc(ws),  # normalised: " ", "\t" and "\n" are all the whitespace
        letters=letters,
        hashes=b.per_doc_at(np.flatnonzero(cls == _HASH)),
        ellipses=ellipses,
        lines=(n_newlines + 1 - blanks) * (b.nbytes > 0),
        punct_lines=b.per_doc(punct_end & line_end),
        invalid=invalid,
    )


def _multibyte_marks(raw: bytes) -> dict[str, np.ndarray]:
    """Per multi-byte mark (``_PUNCT_MULTI`` and U+FFFD), the positions of its last byte."""
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
    return found


def _letters(b: _Bytes, non_ascii: np.ndarray) -> np.ndarray:
    """Letters per text: ASCII ones from the byte classes, the others counted in Python."""
    letters = b.per_doc(b.cls == _LETTER)
    for i in np.flatnonzero(non_ascii).tolist():
        start, stop = int(b.offsets[i]), int(b.offsets[i + 1])
        others = b.raw[start:stop].translate(None, _ASCII_BYTES).decode("utf-8")  # non-ASCII only
        letters[i] += sum(map(str.isalpha, others))
    return letters


def _ellipses(b: _Bytes, arr: pa.Array) -> np.ndarray:
    """``str.count("...")`` per text: runs of three dots, from the byte classes."""
    dots = np.flatnonzero(b.cls == _DOT)
    triple = dots[:-2][(dots[1:-1] == dots[:-2] + 1) & (dots[2:] == dots[:-2] + 2)]
    text = text_at(b.offsets, triple)
    triple = triple[triple + 2 < b.offsets[1:][text]]  # a run may not reach into the next text
    counts = b.per_doc_at(triple)
    # Overlapping triples overcount runs of four or more dots: count those texts exactly.
    quads = triple[1:][triple[1:] == triple[:-1] + 1]
    for i in np.unique(text_at(b.offsets, quads)).tolist():
        counts[i] = arr[i].as_py().count("...")
    return counts
