"""Unicode repair and whitespace normalisation of whole batches of texts.

Arrow's compute kernels (RE2 regexes) do the rewriting; each step first asks whether the batch
contains anything it would change (a substring test on the raw bytes) and then touches only the
rows that do.

Mojibake (UTF-8 read as Windows-1252, Latin-1 or another single-byte code page: "donâ€™t",
"cafÃ©") is repaired by ftfy, line by line, in the rows that need it. Which rows those are is
decided in RE2 by ftfy's own badness heuristic (``MOJIBAKE_CANDIDATE``, translated from
``ftfy.badness.BADNESS_RE``): a row it does not match is one where ftfy would change nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

import ftfy
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ftfy.badness import BADNESS_RE

from gpt.data.clean.arrow import byte_offsets, mask, on_rows, pick, raw_bytes, text_at

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

#: For ``ftfy.fix_encoding_and_explain``, ftfy's encoding repair alone, with its plan (not
#: ``fix_text``, which also uncurls quotes, splits ligatures and unescapes HTML, and without an
#: explanation ignores these settings). C1 controls that are not part of a misread UTF-8
#: sequence are left to the control-character step (see ``repair_mojibake``).
MOJIBAKE_FIXER = ftfy.TextFixerConfig(fix_c1_controls=False)
#: The plan steps of a repair that decodes UTF-8, the only repairs that are kept.
_UTF8_STEPS = frozenset({("decode", "utf-8"), ("decode", "utf-8-variants"),
                         ("apply", "decode_inconsistent_utf8")})
#: Repair, then normalise, at most this many times: normalising can join two halves of a
#: misread sequence (a removed control between them, NFC composing a letter), so the output is
#: checked again until repair changes nothing.
REPAIR_ROUNDS = 3


def _python_to_re2(pattern: str) -> str:
    """A verbose Python regex (without groups) as RE2, matching wherever the Python one does.

    Comments and whitespace outside brackets go; ``\\s`` and ``\\w`` become Unicode classes
    (RE2's are ASCII-only); ``^`` matches at each line start (ftfy judges a text line by line).
    Anything else that RE2 might read differently is refused rather than guessed.

    Raises:
        ValueError: the pattern uses syntax this translation does not know.
    """
    space = r"\t-\r\x{1c}-\x{20}\x{85}\pZ"  # Python's str.isspace()
    word = r"\pL\pN_"  # Python's \w for str: alphanumerics and "_" (a superset of them)
    out: list[str] = []
    in_class = negated = False
    text = "\n".join(line for line in pattern.split("\n") if not line.strip().startswith("#"))

    def refuse(what: str) -> ValueError:
        return ValueError(f"cannot translate {what!r} of ftfy's badness regex to RE2 (ftfy "
                          f"{ftfy.__version__}; translated for 6.3): pin ftfy to a 6.3 release")

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            esc = text[i:i + 2]
            if esc in (r"\s", r"\w") and not negated:
                cls = space if esc == r"\s" else word
                out.append(cls if in_class else f"[{cls}]")
            elif esc == r"\x" and all(h in "0123456789abcdefABCDEF" for h in text[i + 2:i + 4]):
                out.append(text[i:i + 4])
                i += 2
            else:
                raise refuse(esc)
            i += 2
            continue
        if in_class:
            if c == "[" or (c == "]" and out[-1] in ("[", "[^")):
                raise refuse(c)  # RE2's [:alpha:] classes; a literal "]"
            negated = negated or (c == "^" and out[-1] == "[")
            if c == "]":
                in_class = negated = False
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
        elif c in "#(){}$":
            raise refuse(c)
        elif not c.isspace():
            out.append(c)
        i += 1
    return "(?m)" + "".join(out)


#: RE2: the rows ftfy's heuristic would call bad (``ftfy.badness.is_bad``) on some line.
MOJIBAKE_CANDIDATE = _python_to_re2(BADNESS_RE.pattern)


def _sub(pattern: str, repl: str) -> Callable[[pa.Array], pa.Array]:
    return lambda a: pc.replace_substring_regex(a, pattern, repl)


def normalize_batch(texts: pa.Array) -> pa.Array:
    """Repair and normalise many documents at once (see ``normalize_text``).

    Args:
        texts: an Arrow (large) string array without nulls, valid UTF-8.

    Returns:
        A ``large_string`` array of the cleaned texts, in the same order.
    """
    before = texts.cast(pa.large_string())
    out = _normalize(_repair(before))
    for _ in range(REPAIR_ROUNDS - 1):
        # Only a row that normalising or repair changed can have become repairable, and no
        # ASCII row ever is.
        rows = _non_ascii_rows(out)
        if len(rows):
            rows = rows[pc.not_equal(pick(out, rows), pick(before, rows)).to_numpy(
                zero_copy_only=False)]
        if not len(rows):
            break
        moved = pick(out, rows)
        repaired = _repair(moved)
        changed = pc.not_equal(repaired, moved).to_numpy(zero_copy_only=False)
        if not changed.any():
            break
        before, out = out, pc.replace_with_mask(out, mask(len(out), rows[changed]),
                                                _normalize(repaired.filter(pa.array(changed))))
    return out


def _normalize(arr: pa.Array) -> pa.Array:
    """Newlines, controls, Unicode spaces, NFC and whitespace runs of a batch (no repair)."""
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


def _repair(arr: pa.Array) -> pa.Array:
    """``arr`` with ``repair_mojibake`` applied to the rows ftfy's heuristic flags."""
    non_ascii = _non_ascii_rows(arr)
    if not len(non_ascii):
        return arr
    candidate = pc.match_substring_regex(pick(arr, non_ascii),
                                         MOJIBAKE_CANDIDATE).to_numpy(zero_copy_only=False)
    if not candidate.any():
        return arr
    where = mask(len(arr), non_ascii[candidate])
    fixed = pa.array([repair_mojibake(t) for t in arr.filter(where).to_pylist()],
                     type=pa.large_string())
    return pc.replace_with_mask(arr, where, fixed)


def _non_ascii_rows(arr: pa.Array) -> np.ndarray:
    """The positions of the texts of ``arr`` that are not pure ASCII."""
    return np.flatnonzero(~pc.string_is_ascii(arr).to_numpy(zero_copy_only=False))


def repair_mojibake(text: str) -> str:
    """Repair mojibake in ``text``, line by line, with ftfy's encoding repair.

    A line is replaced by ftfy's repair only when that repair decodes UTF-8 (UTF-8 that was
    read in a single-byte code page: "donâ€™t" -> "don’t", "cafÃ©" -> "café", also when
    misread twice). Other guesses of ftfy's, such as reading stray C1 controls as
    Windows-1252, are not taken: those controls are removed, as every control is. Quotes,
    ligatures and HTML entities are not touched.

    Args:
        text: one document's text (lines split at ``\\n``).

    Returns:
        The repaired text (``text`` itself where nothing needs repair).
    """
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.isascii():
            continue
        fixed, plan = ftfy.fix_encoding_and_explain(line, MOJIBAKE_FIXER)
        if fixed != line and any(tuple(step) in _UTF8_STEPS for step in plan):
            lines[i] = SURROGATES.sub(REPLACEMENT_CHAR, fixed)  # utf-8-variants can decode them
    return "\n".join(lines)


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

    Repairs mojibake with ftfy (``repair_mojibake``) where ftfy's heuristic finds it, strips
    the BOM and zero-width spaces, turns every newline variant into ``\\n``, removes
    control characters other than ``\\n`` and ``\\t``, turns lone surrogates into U+FFFD and
    Unicode spaces into ASCII spaces, applies NFC, collapses runs of spaces inside lines (not
    indentation), drops trailing whitespace and more than one blank line in a row, and strips
    the ends; and repeats the repair (and normalisation) while that changes the result, at most
    ``REPAIR_ROUNDS`` times. The same code as the batch path (``normalize_batch``), for one text.

    Args:
        text: the raw text.

    Returns:
        The cleaned text.
    """
    if not text.isascii():
        text = SURROGATES.sub(REPLACEMENT_CHAR, text)
    return normalize_batch(pa.array([text], type=pa.large_string()))[0].as_py()
