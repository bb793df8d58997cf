"""Data-contract tests for gpt.data.clean: every document kept or rejected with its reason."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from gpt.config import CleanConfig, load_params
from gpt.data.clean import (
    REJECTED_COLUMNS,
    clean_documents,
    clean_shards,
    normalize_text,
    render_report,
)
from gpt.data.records import DOC_COLUMNS
from gpt.errors import DataError

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"

GOOD = ("The quick brown fox jumps over the lazy dog. It was a sunny day in the park, and "
        "everyone enjoyed the walk.")


def make_cfg(**overrides: object) -> CleanConfig:
    """The clean section of params.yaml with ``overrides`` applied."""
    return load_params(PARAMS, overrides={f"clean.{k}": v for k, v in overrides.items()}).clean


def frame(*texts: str, ids: list[str] | None = None) -> pd.DataFrame:
    ids = ids or [f"d{i}" for i in range(len(texts))]
    return pd.DataFrame({"doc_id": ids, "source": "test", "name": ids, "text": list(texts)},
                        columns=DOC_COLUMNS)


def variant(i: int) -> str:
    """A distinct good document (distinct enough not to be a near duplicate)."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
             "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"]
    rng = random.Random(i)  # seeded per document: no two share a run of five words
    picked = [rng.choice(words) for _ in range(12)]
    return f"Document {i} talks about " + " ".join(picked) + f" and number {i * 31}."


def reason_of(text: str, cfg: CleanConfig | None = None) -> str | None:
    res = clean_documents(frame(text), cfg or make_cfg())
    assert len(res.kept) + len(res.rejected) == 1
    return None if len(res.kept) else res.rejected["reason"].iloc[0]


@pytest.fixture(scope="module")
def cfg() -> CleanConfig:
    return make_cfg()


def test_good_document_is_kept(cfg: CleanConfig) -> None:
    res = clean_documents(frame(GOOD), cfg)
    assert res.kept["text"].tolist() == [GOOD]
    assert list(res.kept.columns) == DOC_COLUMNS
    assert list(res.rejected.columns) == REJECTED_COLUMNS
    assert res.rejected.empty


@pytest.mark.parametrize(("text", "reason"), [
    ("Too short.", "too_short"),
    ("x" * 50 + ".", "too_few_words"),
    ("Paragraphs, sentences; (words)!? - (everywhere).", "too_few_words"),  # "-" is no word
    ("Shortwords a b c d e f g h i j k l m n o p q r s t u v w x y z.", "word_length"),
    ("Antidisestablishmentarianism supercalifragilisticexpialidocious "
     "pneumonoultramicroscopicsilicovolcanoconiosis floccinaucinihilipilification "
     "hippopotomonstrosesquippedaliophobia.",
     "word_length"),
    ("#heading #more #tags #everywhere in this text here... and... now.", "symbol_ratio"),
    ("1234 5678 9012 3456 7890 1234 5678 9012 3456 7890 1234 5678 9012 the end.", "low_alpha"),
    ("A line of text without an end\nanother line of text without an end\n"
     "and a third line of text too", "line_punctuation"),
    ("The same line is here again, long enough.\nThe same line is here again, long enough.\n"
     "The same line is here again, long enough.\nAnd one different line at last, long too.",
     "repeated_lines"),
    ("Home\nAbout us\nContact\nA line of prose that is long enough to count.", "short_lines"),
    ("- the first item of the list here.\n- the second item of the list here.\n"
     "- the third item of the list here.", "bullet_lines"),
    ("It went on and on, and on and on...\nAnd on and on, further than before...\n"
     "Until it stopped, some time later.", "ellipsis_lines"),
    ("Bad bytes \ufffd\ufffd\ufffd in this document which otherwise reads fine.", "invalid_utf8"),
])
def test_each_filter_has_its_reason(text: str, reason: str, cfg: CleanConfig) -> None:
    assert reason_of(text, cfg) == reason


def test_too_long_and_too_many_words() -> None:
    assert reason_of(GOOD, make_cfg(max_chars=50)) == "too_long"
    assert reason_of(GOOD, make_cfg(max_words=10)) == "too_many_words"


def test_exact_duplicates_point_at_the_first_kept(cfg: CleanConfig) -> None:
    # d1 is rejected (too short), d2 and d4 duplicate d0 (d4 only after normalisation).
    docs = frame(GOOD, "short", GOOD, variant(1), "  " + GOOD.replace(" ", "   ") + "\r\n")
    res = clean_documents(docs, cfg)
    assert res.kept["doc_id"].tolist() == ["d0", "d3"]
    reasons = dict(zip(res.rejected["doc_id"], res.rejected["reason"], strict=True))
    assert reasons == {"d1": "too_short", "d2": "duplicate_of=d0", "d4": "duplicate_of=d0"}
    assert res.stats["rejected_by_reason"] == {"duplicate_of": 2, "too_short": 1}


def test_exact_dedup_can_be_switched_off() -> None:
    res = clean_documents(frame(GOOD, GOOD), make_cfg(exact_dedup=False, near_dedup=False))
    assert len(res.kept) == 2


def test_duplicate_ids_reject_the_later_ones(cfg: CleanConfig) -> None:
    res = clean_documents(frame(variant(1), variant(2), variant(3), ids=["a", "b", "a"]), cfg)
    assert res.kept["text"].tolist() == [variant(1), variant(2)]
    assert res.rejected[["doc_id", "reason"]].values.tolist() == [["a", "duplicate_id"]]


def test_invariant_and_order(cfg: CleanConfig) -> None:
    texts = [variant(i) for i in range(20)]
    texts[3] = "tiny"
    texts[7] = texts[2]
    texts[11] = "\x00\x01" * 40
    texts[15] = ""
    res = clean_documents(frame(*texts), cfg)
    assert len(res.kept) + len(res.rejected) == len(texts)
    assert sorted(res.kept["doc_id"].tolist() + res.rejected["doc_id"].tolist()) == \
        sorted(f"d{i}" for i in range(20))
    assert res.kept["doc_id"].tolist() == [f"d{i}" for i in range(20) if i not in {3, 7, 11, 15}]
    assert res.rejected["doc_id"].tolist() == ["d3", "d7", "d11", "d15"]
    assert res.stats["docs_in"] == 20 and res.stats["docs_kept"] == 16
    assert res.stats["docs_rejected"] == 4


def test_deterministic(cfg: CleanConfig) -> None:
    docs = frame(*(variant(i % 7) for i in range(30)))
    a, b = clean_documents(docs, cfg), clean_documents(docs, cfg)
    pd.testing.assert_frame_equal(a.kept, b.kept)
    pd.testing.assert_frame_equal(a.rejected, b.rejected)
    assert a.stats == b.stats


def test_missing_text_and_odd_values_are_rejected_not_lost(cfg: CleanConfig) -> None:
    docs = pd.DataFrame({"doc_id": ["a", "b", "c"], "source": ["s", None, "s"],
                         "name": ["a", "b", 3], "text": [GOOD, None, float("nan")]})
    res = clean_documents(docs, cfg)
    assert res.kept["doc_id"].tolist() == ["a"]
    assert res.rejected["reason"].tolist() == ["too_short", "too_short"]
    assert res.rejected["excerpt"].tolist() == ["", ""]


def test_empty_input(cfg: CleanConfig) -> None:
    res = clean_documents(pd.DataFrame(columns=DOC_COLUMNS), cfg)
    assert res.kept.empty and res.rejected.empty
    assert list(res.kept.columns) == DOC_COLUMNS
    assert res.stats["docs_in"] == 0 and res.stats["dedup_rate"] == 0.0


def test_missing_columns_raise_data_error(cfg: CleanConfig) -> None:
    with pytest.raises(DataError, match="text"):
        clean_documents(pd.DataFrame({"doc_id": ["a"], "source": ["s"], "name": ["n"]}), cfg)


def test_rejected_excerpt_is_original_text_prefix(cfg: CleanConfig) -> None:
    text = "#" * 500
    res = clean_documents(frame(text), cfg)
    assert res.rejected["excerpt"].iloc[0] == text[:200]


def test_normalize_text() -> None:
    assert normalize_text("\ufeffHello") == "Hello"
    assert normalize_text("cafe\u0301") == "caf\u00e9"  # NFC
    assert normalize_text("a\x00b\x07c\x1bd\x7fe\x9f") == "abcde"
    assert normalize_text("one\r\ntwo\rthree\u2028four") == "one\ntwo\nthree\nfour"
    assert normalize_text("a  b\u00a0\u00a0c \t\nd") == "a b c\nd"
    assert normalize_text("x\n\n\n\n\ny") == "x\n\ny"
    # Indentation of code blocks survives, tabs too.
    assert normalize_text("Example:\n    >>> f(1)\n\tx") == "Example:\n    >>> f(1)\n\tx"
    assert normalize_text("lone \ud800 surrogate") == "lone \ufffd surrogate"


def test_stats_are_json_and_report_renders(cfg: CleanConfig) -> None:
    other = "caf\u00e9 " + variant(5)
    res = clean_documents(frame(GOOD, GOOD, "tiny", other), cfg)
    stats = json.loads(json.dumps(res.stats))
    for key in ("docs_in", "docs_kept", "docs_rejected", "rejected_by_reason", "bytes_in",
                "bytes_out", "dedup_rate", "pii_replacements"):
        assert key in stats
    assert stats["bytes_in"] == sum(len(t.encode()) for t in [GOOD, GOOD, "tiny", other])
    assert stats["bytes_out"] == len(GOOD.encode()) + len(other.encode())
    report = render_report(stats)
    assert "| duplicate_of | 1 |" in report and "| too_short | 1 |" in report
    assert "4 in, 2 kept" in report


LONG = ("The configuration loader reads the parameters file once, validates every section "
        "against its schema, applies the selected profile and then the command line "
        "overrides, and returns a frozen object that the pipeline passes to each stage. "
        "Missing keys are errors rather than silent defaults, so a typo in a parameter name "
        "fails fast with a message that lists the known keys of that section.")


def test_near_duplicates_point_at_the_first_kept() -> None:
    cfg = make_cfg(near_dedup_threshold=0.8)  # the similarities below are set around 0.8
    near = LONG.replace("returns a frozen", "returns an immutable")  # Jaccard 0.82
    other = LONG.replace("lists the known", "lists all known")
    # d5 is similar to d2 (rejected) but not to d0: it is compared with kept documents only.
    docs = frame(LONG, variant(1), near, variant(2), other, near + " Extra words here.", near)
    res = clean_documents(docs, cfg)
    assert res.kept["doc_id"].tolist() == ["d0", "d1", "d3", "d5"]
    # d6 is an exact copy of d2, which is a near duplicate of d0: it points at d0 too.
    assert res.rejected["reason"].tolist() == ["near_duplicate_of=d0"] * 3
    assert res.stats["rejected_by_reason"] == {"near_duplicate_of": 3}
    assert res.stats["dedup_rate"] == round(3 / 7, 6)
    off = clean_documents(docs, make_cfg(near_dedup=False))
    assert len(off.kept) == 6


def test_distinct_documents_are_not_near_duplicates(cfg: CleanConfig) -> None:
    res = clean_documents(frame(*(variant(i) for i in range(40))), cfg)
    assert len(res.kept) == 40


def test_pii_is_replaced_and_counted(cfg: CleanConfig) -> None:
    text = ("Contact jane.doe@example.org or call +1 415 555 0134 from host 192.168.10.20 "
            "or 2001:db8::8a2e:370:7334. Use api_key=9f86d081884c7d659a2feaa0c55ad015 and "
            "AKIAIOSFODNN7EXAMPLE to log in. Python 3.11.7 ships with version 1.2.3 of it.")
    res = clean_documents(frame(text), cfg)
    out = res.kept["text"].iloc[0]
    assert out == ("Contact <EMAIL> or call <PHONE> from host <IP> or <IP>. Use "
                   "api_key=<SECRET> and <SECRET> to log in. Python 3.11.7 ships with version "
                   "1.2.3 of it.")
    assert res.stats["pii_replacements"] == {"email": 1, "ip": 2, "phone": 1, "secret": 2}
    kept = clean_documents(frame(text), make_cfg(pii=[]))
    assert kept.kept["text"].iloc[0] == text
    assert kept.stats["pii_replacements"] == {}


@pytest.mark.parametrize("text", [
    "Use dict.get(key, default) to read a key: it returns None when missing.",
    "Slices like x[::2] and x[1:3] and times like 12:30:45 stay as they are.",
    "The OID 1.3.6.1.5.5.7.3.1 and version 10.0.19041 are not addresses.",
    "Please call the function f(1234567890) and compare the date 2024-01-15 with the "
    "numbers 3.14159 and 1e+10 in the examples.",
    "The token: a string to parse; password = None; secret_key = os.environ['X'].",
])
def test_pii_leaves_ordinary_text_alone(text: str, cfg: CleanConfig) -> None:
    res = clean_documents(frame(text), make_cfg(min_punct_line_fraction=0))
    assert res.kept["text"].tolist() == [text]


def test_clean_shards_matches_single_process() -> None:
    cfg = make_cfg()
    texts = [variant(i % 9) for i in range(30)] + [LONG, LONG + " More.", "tiny"]
    docs = frame(*texts, ids=[f"d{i % 31}" for i in range(len(texts))])
    whole = clean_documents(docs, cfg)
    shards = [docs.iloc[:7], docs.iloc[7:20], docs.iloc[20:]]
    sharded = clean_shards(shards, cfg, workers=2)
    pd.testing.assert_frame_equal(whole.kept, sharded.kept)
    pd.testing.assert_frame_equal(whole.rejected, sharded.rejected)
    assert whole.stats == sharded.stats
    assert "duplicate_id" in set(sharded.rejected["reason"])
