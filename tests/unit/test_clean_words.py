"""Words as FineWeb counts them: the restated spaCy tokenizer against spaCy, the batch tokens
against the plain statement, and the tables against the installed libraries."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt.data.clean import normalize_batch
from gpt.data.clean.words import (
    STOP_WORDS,
    WORD,
    bounds,
    chunks,
    token_flags,
    tokenize,
    words,
)
from tests.unit.fineweb_tables import TABLES, build

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Pieces of chunks: letters, digits, every ASCII punctuation mark, the non-ASCII marks spaCy's
# tables name (quotes, dashes, ellipsis, currency, symbols), contractions, abbreviations,
# emoticons, URLs, units.
PIECES = ["word", "Word", "WORD", "a", "I", "x", "the", "of", "and", "s", "t", "12", "3.14",
          "1,000", "km", "kg", "%", "$", "€", "£", "°C", "²", "n't", "'s", "'re", "'ll", "'m",
          "don't", "can't", "won't", "cannot", "gonna", "e.g.", "i.e.", "U.S.", "Mr.", "etc.",
          "a.m.", "vs.", ":)", ":-)", ";)", ":(", "<3", ":D", ":p", "o_O", "(:", "):", "''", "--",
          "...", "…", "……", "—", "–", "-", "_", "“", "”", "‘", "’", "«", "»", "„", "©", "®",
          "→", "☺", "https://example.com/a?b=c", "www.example.org", "user@example.com",
          "os.path", "f(x)", "a/b", "a=b", "a:b", "x<y", "a-b", "A.B", "a.B", "é", "ß", "日本",
          "\u0301", "ﬁ"] + list("!\"#$%&'()*+,./:;<=>?@[\\]^`{|}~")
chunk = st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join)
texts = st.lists(st.tuples(chunk, st.sampled_from([" ", " ", " ", "\n", "\t", "\n\n"])),
                 max_size=40).map(lambda parts: "".join(c + s for c, s in parts))


def test_tables_are_the_installed_libraries() -> None:
    pytest.importorskip("spacy")
    pytest.importorskip("datatrove")
    stored = json.loads(TABLES.read_text(encoding="utf-8"))
    fresh = build()
    stored.pop("source")
    fresh.pop("source")
    assert stored == fresh, ("gpt/data/clean/fineweb.json differs from the installed spaCy/"
                             "datatrove: python -c 'from tests.unit.fineweb_tables import write; "
                             "write()'")


@SETTINGS
@given(texts)
def test_tokenize_is_spacys(text: str) -> None:
    pytest.importorskip("spacy")
    from datatrove.utils.text import split_into_words

    assert tokenize(text) == split_into_words(text)


def _check_batch(batch: list[str]) -> None:
    arr = normalize_batch(pa.array(batch, type=pa.large_string()))
    split = pc.split_pattern(arr, "\n")
    line_doc = pc.list_parent_indices(split).to_numpy(zero_copy_only=False)
    w = words(pc.list_flatten(split), line_doc, len(arr))
    at, line = w.stream()
    doc = line_doc[line]
    tokens_per_doc = w.per_doc(np.ones(len(w.ids), dtype=np.int64))
    words_per_doc = w.per_doc((w.flags & WORD) > 0)
    stops = w.stop_words()
    ids: dict[str, int] = {}
    for i, text in enumerate(arr.to_pylist()):
        expected = tokenize(text)
        mine = at[doc == i]
        assert tokens_per_doc[i] == len(expected) == len(mine)
        assert w.lengths[mine].tolist() == [len(t) for t in expected]
        assert w.flags[mine].tolist() == [token_flags(t) for t in expected]
        assert words_per_doc[i] == sum(bool(token_flags(t) & WORD) for t in expected)
        assert stops[i] == len(set(expected) & set(STOP_WORDS))
        for token, token_id in zip(expected, w.ids[mine].tolist(), strict=True):
            assert ids.setdefault(token, token_id) == token_id, token
    assert len(set(ids.values())) == len(ids)  # different tokens, different ids


@SETTINGS
@given(st.lists(texts, min_size=1, max_size=12))
def test_batch_tokens_match_the_plain_statement(batch: list[str]) -> None:
    _check_batch(batch)


def _check_bounds(batch: list[str]) -> None:
    """``words.bounds`` holds each document's exact counts, and equals them where it says so."""
    arr = normalize_batch(pa.array(batch, type=pa.large_string()))
    split = pc.split_pattern(arr, "\n")
    lines = pc.list_flatten(split)
    line_doc = pc.list_parent_indices(split).to_numpy(zero_copy_only=False)
    c = chunks(lines)
    b = bounds(c, line_doc, len(arr))
    w = words(lines, line_doc, len(arr), c)
    t = w.totals
    for name in ("tokens", "words", "word_chars", "alpha"):
        lo, hi = getattr(b, name)
        exact = getattr(t, name)
        bad = np.flatnonzero((lo > exact) | (exact > hi) | (b.exact & (lo != hi)))
        assert not len(bad), (name, [arr[int(i)].as_py() for i in bad[:3]])
    stops = w.stop_words()
    lo, hi = b.stops
    assert (lo <= stops).all() and (stops <= hi).all() and (lo[b.exact] == hi[b.exact]).all()


# Chunks of letters, digits and the marks between them (units, contractions, code, numbers).
RUNS = ["ab", "Ab", "AB", "x", "s", "km", "12", "3", "the", "cannot", "gonna", "am", "pm", "US",
        "n't", "'s", "-", ".", ",", "'", "(", ")", "$", "%", "_", "/", ":", "=", "+", "#", "é"]
run_chunk = st.lists(st.sampled_from(RUNS), min_size=1, max_size=6).map("".join)
run_texts = st.lists(run_chunk, max_size=30).map(" ".join)


@SETTINGS
@given(st.lists(st.one_of(texts, run_texts), min_size=1, max_size=12))
def test_word_bounds_hold(batch: list[str]) -> None:
    _check_bounds(batch)


def test_batch_tokens_on_prose_and_code() -> None:
    from gpt.data.sources import read_source
    from tests.conftest import data_config

    batch = read_source(data_config("builtin", max_docs=300))["text"].tolist() + [
        "The U.S. didn't (really) say \"no,\" did it? Well... maybe: see https://x.org/a.",
        "Items: (a), [b]; {c}! e.g. x.y.z, 3.5km, $10, 50%, #tag, @user, don't-stop.",
    ]
    _check_batch(batch)
    _check_bounds(batch)


def test_prefix_and_suffix_shortcuts_hold_for_every_letter_and_digit() -> None:
    """words._prefix_len/_suffix_len skip spaCy's patterns for chunks that start with a letter
    or digit (no prefix but "US$", "C$", "A$") or end in a letter with no digit before it and
    no "'s" (no suffix): true of every such character."""
    from gpt.data.clean import words as w

    for cp in range(0x110000):
        c = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or not c.isalnum():
            continue
        assert w._PREFIX(c + "x") is None or (c + "x").startswith(w._LETTER_PREFIXES), c
        if c.isalpha():
            for before in ("x", "xy", "x.", "-", "Ab"):
                assert w._SUFFIX(before + c) is None, (before, c)


@SETTINGS
@given(st.lists(st.sampled_from(PIECES + ["\n", "5", "m", "km²", ".."]), min_size=1,
                max_size=8).map("".join))
def test_affix_searches_are_the_patterns(s: str) -> None:
    """words._suffix_len (the suffix pattern's longer alternatives at every position, those of
    one character at the last) and the infix search started only where _MAYBE_INFIX matches
    give what spaCy's whole patterns give."""
    from gpt.data.clean import words as w

    for part in {s, s[1:], s[:-1], s[-12:]}:
        m = w._SUFFIX(part)
        assert w._suffix_span(part) == (m.span() if m else None), part
        assert [m.span() for m in w._INFIX_AT(part)] == [m.span() for m in w._INFIX(part)], part
