"""Each quality rule, batch by batch, against its one-text-at-a-time statement.

The texts are web-like pages made of the pieces every rule looks at (menus, bullets, ellipses,
repeated lines, paragraphs and phrases, hashtags, "lorem ipsum", curly brackets, "javascript"
and cookie lines, citations, code), so every rule both rejects and keeps some of them, at
gptops's thresholds and at tighter ones. Each rule judges the rows still pending only, so the
rows of a batch are also judged with some of them already rejected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt.config import load_params
from gpt.data.clean import features, normalize_batch
from gpt.data.clean.filters import BY_NAME, QUALITY_FILTERS, Batch
from tests.unit import reference_clean as ref
from tests.unit.test_clean_property import TRICKY

CFG = load_params(Path(__file__).resolve().parents[2] / "params.yaml").clean
TIGHT = CFG.model_copy(update={
    "max_invalid_ratio": 0.0, "min_chars": 60, "max_chars": 300, "min_words": 30,
    "max_words": 60, "max_mean_word_length": 6.0, "max_symbol_ratio": 0.02,
    "min_alpha_ratio": 0.8, "min_punct_line_fraction": 0.6, "max_short_line_fraction": 0.3,
    "short_line_chars": 12, "max_dup_line_fraction": 0.1, "max_dup_line_char_fraction": 0.05,
    "max_dup_para_fraction": 0.1, "max_dup_para_char_fraction": 0.05, "max_char_dup_fraction": 0.0,
    "max_bullet_line_fraction": 0.2, "max_ellipsis_line_fraction": 0.1,
    "min_alpha_word_fraction": 0.95, "min_stop_words": 5, "max_newline_ratio": 0.05,
    "min_sentences": 3, "min_line_words": 1, "max_line_word_chars": 8,
    "reject_lorem_ipsum": True, "reject_curly_brackets": True,
    "max_top_ngram_fraction": [[1, 0.05], [2, 0.08]],
    "max_dup_ngram_fraction": [[3, 0.02], [5, 0.01]]})
#: The rules stated in ``reference_clean.RULES`` (URL blocking and language have their own tests).
RULES = [r.name for r in QUALITY_FILTERS if r.name in ref.RULES]

PIECES = ["The value of the data is returned to the caller.", "Home", "About us", "Read more",
          "- a list item with some words", "\u2022 another bullet", "  - indented item",
          "It was late...", "And then \u2026", "Lorem ipsum dolor sit amet.", "lorem ipsum",
          "Use {curly} brackets here.", "Enable JavaScript to see {this}.",
          "This site uses cookies.", "Read our privacy policy and terms of use today.",
          "It rose [1] and fell.[citation needed] Then [edit] it stopped.",
          "#tag #tag #other", "see e.g. the U.S. report... really? yes!", "x = f(a, b) + 1",
          "{'key': [1, 2]}", ">>> print(x)", "the the the the the the", "of the of the of the",
          "42 3.14 $5 100% -- ==", "don't can't won't it's", "x" * 12, "A. B. C. D.",
          "Share this article", "Next page \u00bb", "\u201cQuoted,\u201d she said.",
          "caf\ufffd au lait"]
line = st.lists(st.sampled_from(PIECES + TRICKY[:20]), min_size=1, max_size=5).map(" ".join)
page = st.lists(st.tuples(line, st.sampled_from(["\n", "\n", "\n\n", " "])), min_size=1,
                max_size=14).map(lambda parts: "".join(a + b for a, b in parts))
repeated = st.tuples(page, st.integers(1, 4)).map(lambda p: "\n".join([p[0]] * p[1]))
pages = st.lists(st.one_of(page, page, repeated), min_size=1, max_size=20)
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _judge(texts: list[str], pending: np.ndarray) -> None:
    arr = pa.array(texts, type=pa.large_string())
    for cfg in (CFG, TIGHT):
        batch = Batch(arr, features(arr), pending.copy())
        with np.errstate(divide="ignore", invalid="ignore"):
            for rule in RULES:
                got = np.asarray(BY_NAME[rule].rejects(batch, cfg), dtype=bool)
                for i in np.flatnonzero(pending).tolist():
                    assert got[i] == bool(ref.RULES[rule](texts[i], cfg)), (rule, texts[i])


@SETTINGS
@given(pages, st.data())
def test_each_rule_matches_its_plain_statement(raw: list[str], data: st.DataObject) -> None:
    texts = normalize_batch(pa.array(raw, type=pa.large_string())).to_pylist()
    pending = np.array(data.draw(st.lists(st.booleans(), min_size=len(texts),
                                          max_size=len(texts))), dtype=bool)
    _judge(texts, np.ones(len(texts), dtype=bool))
    _judge(texts, pending)


def test_rules_reject_and_keep_the_example_pages() -> None:
    rng = np.random.default_rng(0)
    raw = []
    for _ in range(300):
        lines = [" ".join(rng.choice(PIECES, int(rng.integers(1, 5))))
                 for _ in range(int(rng.integers(1, 12)))]
        lines += list(rng.choice(lines, int(rng.integers(0, 3))))
        breaks = rng.choice(["\n", "\n\n"], len(lines))
        raw.append("".join(str(x) + str(b) for x, b in zip(lines, breaks, strict=True)))
    texts = normalize_batch(pa.array(raw, type=pa.large_string())).to_pylist()
    for rule in RULES:  # each rule rejects some and keeps some, at one of the settings
        hits = [sum(bool(ref.RULES[rule](t, cfg)) for t in texts) for cfg in (CFG, TIGHT)]
        assert any(0 < h < len(texts) for h in hits), (rule, hits)
    _judge(texts, np.ones(len(texts), dtype=bool))


#: Every rule on (FineWeb's values), and a decontamination set.
ALL_ON = CFG.model_copy(update={
    "near_dedup": False, "max_char_dup_fraction": 0.01, "min_alpha_word_fraction": 0.8,
    "min_stop_words": 2, "reject_curly_brackets": True, "min_sentences": 5,
    "max_top_ngram_fraction": [[2, 0.20], [3, 0.18], [4, 0.16]],
    "max_dup_ngram_fraction": [[5, 0.15], [6, 0.14], [7, 0.13], [8, 0.12], [9, 0.11],
                               [10, 0.10]], "decontaminate_ngram": 6})
EVAL_SETS = [("bench:pieces", ["the value of the data is returned to the caller",
                               "read our privacy policy and terms"])]


@SETTINGS
@given(pages)
def test_the_engine_with_every_rule_on_matches_the_plain_statement(raw: list[str]) -> None:
    import pandas as pd

    from gpt.data.clean import clean_documents
    from gpt.data.clean.decontam import build
    from gpt.data.records import DOC_COLUMNS

    ids = [str(i) for i in range(len(raw))]
    docs = pd.DataFrame({"doc_id": ids, "source": "prop", "name": ids, "text": raw},
                        columns=DOC_COLUMNS, dtype=object)
    for cfg in (ALL_ON, TIGHT.model_copy(update={"near_dedup": False})):
        res = clean_documents(docs, cfg, build(EVAL_SETS, cfg.decontaminate_ngram))
        kept = dict(zip(res.kept["doc_id"], res.kept["text"], strict=True))
        rejected = dict(zip(res.rejected["doc_id"], res.rejected["reason"], strict=True))
        for i, (text, reason) in enumerate(ref.filter_documents(raw, cfg, sets=EVAL_SETS)):
            if reason is None:
                assert kept.get(str(i)) == text
            else:
                assert rejected.get(str(i)) == reason, (raw[i], reason)
