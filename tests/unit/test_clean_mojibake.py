"""Mojibake repair: ftfy on the rows an RE2 translation of ftfy's own heuristic flags.

The batch engine only sends candidate rows (``MOJIBAKE_CANDIDATE``) to ftfy, so the candidates
must include every text ftfy would call bad; text without candidates must normalise exactly as
before; misread text (UTF-8 decoded as Windows-1252 or Latin-1) must clean like the text it
was; and repair must be idempotent.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from ftfy.badness import BADNESS_RE, is_bad
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt.data.clean import normalize_batch, normalize_text
from gpt.data.clean.normalize import MOJIBAKE_CANDIDATE, _python_to_re2, repair_mojibake
from tests.unit import reference_clean as ref
from tests.unit.test_clean_property import garbage, prose, soup, tricky

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: Every character ftfy's heuristic names, Latin-1 and Latin Extended-A, and whitespace of
#: every kind (its ``\s``).
_HEURISTIC_CHARS = sorted({c for c in BADNESS_RE.pattern if not c.isascii()}
                          | {chr(c) for c in range(0x80, 0x180)} | set("\u2000\u2028\u3000"))
HEURISTIC_ALPHABET = _HEURISTIC_CHARS + list("aZe.,?! \n\t\x1c")


def _candidates(texts: list[str]) -> list[bool]:
    arr = pa.array(texts, type=pa.large_string())
    return pc.match_substring_regex(arr, MOJIBAKE_CANDIDATE).to_pylist()


def _misread(text: str, encoding: str) -> str:
    """UTF-8 bytes decoded as ``encoding``; Windows-1252's five unused bytes as Latin-1."""
    return "".join(bytes([b]).decode(encoding, errors="replace").replace("\ufffd", chr(b))
                   for b in text.encode("utf-8"))


def test_every_pair_of_heuristic_characters_ftfy_calls_bad_is_a_candidate():
    pairs = [a + b for a in _HEURISTIC_CHARS for b in _HEURISTIC_CHARS + ["a", " "]]
    flagged = _candidates(pairs)
    missed = [p for p, hit in zip(pairs, flagged, strict=True) if is_bad(p) and not hit]
    assert not missed, missed[:20]
    # Tight enough to leave correct accented text alone.
    assert not any(_candidates(["café", "naïve", "Größe", "über", "日本語", "½ cup", "x² + y³"]))


@SETTINGS
@given(st.lists(st.text(st.sampled_from(HEURISTIC_ALPHABET), max_size=8), min_size=1,
                max_size=4).map("\n".join))
def test_a_text_with_a_line_ftfy_calls_bad_is_a_candidate(text: str) -> None:
    if any(is_bad(line) for line in text.split("\n")):
        assert _candidates([text]) == [True]


def test_the_translation_refuses_syntax_it_does_not_know():
    assert _python_to_re2("[a\\s] [^x]\n  # comment\n  \\w") == \
        "(?m)[a\\t-\\r\\x{1c}-\\x{20}\\x{85}\\pZ][^x][\\pL\\pN_]"
    for pattern in ("[^\\s]", "(a)", "\\d", "[[:alpha:]]", "a{2}", "a$"):
        with pytest.raises(ValueError, match="pin ftfy"):
            _python_to_re2(pattern)


@SETTINGS
@given(st.one_of(garbage, soup, prose, tricky))
def test_text_without_candidates_normalises_as_before(text: str) -> None:
    valid = ref._SURROGATES.sub("\ufffd", text)
    before = ref.plain_normalize(text)
    if not any(_candidates([valid, before])):
        assert repair_mojibake(valid) == valid
        assert normalize_text(text) == before


# Western European prose: ASCII words with Latin-1 letters, curly quotes, dashes, the euro sign.
# The documented subset where ftfy can tell: "Ã…", "ÃŽ", "Ã’", "ÃŒ" (Å, Î, Ò, Ì) and "Ã¥" (å,
# after a digit or punctuation) do not look wrong to its heuristic, so those stay misread.
_CANNOT_TELL = set("ÅÎÒÌå×÷")
_ACCENTS = [chr(c) for c in range(0xC0, 0x100) if chr(c) not in _CANNOT_TELL] + \
    list("’‘“”–—…€«»£©°")
_ASCII = ["the", "parser", "returns", "a", "list", "of", "tokens", "when", "Called", "x.",
          "1999", "(it)", "\n", "  ", "\t"]


@st.composite
def _accented_word(draw: st.DrawFn) -> str:
    word = list(draw(st.sampled_from(_ASCII)))
    for _ in range(draw(st.integers(0, 3))):
        word.insert(draw(st.integers(0, len(word))), draw(st.sampled_from(_ACCENTS)))
    return "".join(word)


western = st.lists(_accented_word(), min_size=1, max_size=10).map(" ".join)


@SETTINGS
@given(western, st.sampled_from(["cp1252", "latin-1"]))
def test_misread_text_cleans_like_the_text_it_was(text: str, encoding: str) -> None:
    misread = _misread(text, encoding)
    assert normalize_text(misread) == normalize_text(text)
    batch = normalize_batch(pa.array([misread, text], type=pa.large_string())).to_pylist()
    assert batch == [normalize_text(text)] * 2


# Mojibake halves, the controls, marks and spaces that normalising removes or merges between
# them, and correct non-ASCII text.
_PIECES = ["Ã", "Â", "â€", "™", "©", "\x9d", "\x99", "\x80", "\xa0", "\x00", "\u200b", "\u0303",
           "A", "e", "\u2000", " ", "\n", "\r", "\x85", "cafÃ©", "donâ€™t", "Ã¼ber", "ÃƒÂ©",
           "â€œquotedâ€\x9d", "Ð¿Ñ€", "æ—¥", "naïve", "日本", "über"]
pieces = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join)


@SETTINGS
@given(st.one_of(pieces, western.map(lambda t: _misread(t, "cp1252")), garbage))
def test_repair_and_normalisation_are_idempotent(text: str) -> None:
    valid = ref._SURROGATES.sub("\ufffd", text)
    assert repair_mojibake(repair_mojibake(valid)) == repair_mojibake(valid)
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert once == ref.normalize(text)
