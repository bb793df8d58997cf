"""Unicode repair and whitespace normalisation of whole batches of texts.

Arrow's compute kernels (RE2 regexes) do the rewriting; each step first asks whether the batch
contains anything it would change (a substring test on the raw bytes) and then touches only the
rows that do.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt.data.clean.arrow import byte_offsets, mask, on_rows, raw_bytes, text_at

REPLACEMENT_CHAR = "\ufffd"

#: Lone surrogates cannot be encoded as UTF-8: they become U+FFFD (so invalid_utf8 sees them).
SURROGATES = re.compile("[\ud800-\udfff]")


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


def _sub(pattern: str, repl: str) -> Callable[[pa.Array], pa.Array]:
    return lambda a: pc.replace_substring_regex(a, pattern, repl)


def normalize_batch(texts: pa.Array) -> pa.Array:
    """Repair and normalise many documents at once (see ``normalize_text``).

    Args:
        texts: an Arrow (large) string array without nulls, valid UTF-8.

    Returns:
        A ``large_string`` array of the cleaned texts, in the same order.
    """
    arr = texts.cast(pa.large_string())
    raw = raw_bytes(arr)

    def adopt(new: pa.Array) -> None:
        nonlocal arr, raw
        if new is not arr:  # later presence tests must see the new bytes
            arr, raw = new, raw_bytes(new)

    def step(where: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> None:
        adopt(on_rows(arr, where, fn))

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
    starts = byte_offsets(arr)
    before = data[np.maximum(nl - 1, 0)]
    trailing = (nl > starts[text]) & ((before == ord(" ")) | (before == ord("\t")))
    step(mask(len(arr), text[trailing]), _sub(_TRAILING_WS, "\n"))
    if trailing.any():  # "\n \n\n" may have just become "\n\n\n"
        nl, text = _newlines(arr, raw)
    third = (nl[2:] == nl[:-2] + 2) & (text[2:] == text[:-2])
    step(mask(len(arr), text[2:][third]), _sub(_BLANK_RUNS, "\n\n"))
    return pc.utf8_trim_whitespace(arr)


def _collapse_space_runs(arr: pa.Array, raw: bytes) -> pa.Array:
    """Runs of spaces after a non-space become one space; indentation is left alone.

    ``(\\S)  +`` -> ``\\1 ``, done on the batch's bytes: find the double spaces, keep the first
    space of each run that follows a non-space byte, delete the rest, and rebuild the array.
    (Whitespace is only " ", "\\t" and "\\n" by now.)
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    starts = byte_offsets(arr)
    space = data == ord(" ")
    pairs = np.flatnonzero(space[:-1] & space[1:])  # i: bytes i and i + 1 are spaces
    text = text_at(starts, pairs)
    pairs, text = pairs[pairs + 1 < starts[1:][text]], text[pairs + 1 < starts[1:][text]]
    if not len(pairs):
        return arr
    # A run's first pair starts at the run's first space; it counts when a non-space byte of
    # the same text comes before it.
    first = np.r_[True, pairs[1:] != pairs[:-1] + 1]
    before = data[np.maximum(pairs - 1, 0)]
    counts = first & (pairs > starts[text]) & (before != ord(" ")) & (before != ord("\t")) \
        & (before != ord("\n"))
    run = np.cumsum(first) - 1
    drop = pairs[counts[np.flatnonzero(first)][run]] + 1
    if not len(drop):
        return arr
    keep = np.ones(len(data), dtype=bool)
    keep[drop] = False
    removed = np.bincount(text_at(starts, drop), minlength=len(arr))
    new_offsets = starts - np.r_[0, np.cumsum(removed)]
    return pa.LargeStringArray.from_buffers(len(arr), pa.py_buffer(new_offsets),
                                            pa.py_buffer(data[keep].tobytes()))


def _newlines(arr: pa.Array, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Positions of "\\n" in ``raw`` (= ``raw_bytes(arr)``) and the texts they are in."""
    nl = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == ord("\n"))
    return nl, text_at(byte_offsets(arr), nl)


def _containing(arr: pa.Array, raw: bytes, *needles: bytes) -> pa.Array:
    """Which texts of ``arr`` (``raw`` = ``raw_bytes(arr)``) contain one of ``needles``.

    A ``bytes.find`` loop that jumps to the next text after each hit: for needles that few
    texts contain, much faster than a kernel that looks at every text.
    """
    starts = byte_offsets(arr)
    found = np.zeros(len(arr), dtype=bool)
    for needle in needles:
        pos = raw.find(needle)
        while pos >= 0:
            row = int(text_at(starts, pos))
            end = int(starts[row + 1])
            if pos + len(needle) <= end:  # not straddling two texts
                found[row] = True
                pos = raw.find(needle, end)
            else:
                pos = raw.find(needle, pos + 1)
    return pa.array(found)


def _normalize_unicode(arr: pa.Array) -> pa.Array:
    """The steps only non-ASCII texts need: spaces, newlines, controls, then NFC."""
    odd = pc.match_substring_regex(arr, _ANY_ODD)
    if pc.any(odd).as_py():
        for pattern, repl in ((_ODD_SPACES, " "), (_NEWLINES, "\n"), (_CONTROLS, "")):
            arr = on_rows(arr, odd, _sub(pattern, repl))
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
        text = SURROGATES.sub(REPLACEMENT_CHAR, text)
    return normalize_batch(pa.array([text], type=pa.large_string()))[0].as_py()
