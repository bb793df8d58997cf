"""gptops's quality rules held to datatrove 0.10 (the library behind FineWeb) as the oracle.

The same documents (a sample of the built-in corpus, web pages built by ``bench.webpages`` and
run through the WARC extractor, and the hostile-input fixtures) are normalised by gptops, then
judged by each gptops rule and by the datatrove filter that states the same rule, configured
with gptops's thresholds and every other rule of that filter off. Per rule, the keep/reject
decisions must agree on at least ``AGREEMENT`` of the documents; disagreements are printed.

Held to the 99.5 % (measured: 100 %): ``repeated_lines`` (GopherRepetition's duplicate-line
fraction) and ``line_punctuation`` (FineWebQuality's line-punctuation ratio, given gptops's set
of line-ending characters). Not yet: gptops's word-based rules count whitespace-separated words,
Gopher's count spaCy tokens (its word counts and mean lengths leave out punctuation tokens, its
symbol ratios count them, and it judges ``#`` and ellipses apart where gptops adds them up).
Their agreement is measured and printed (``test_word_rules_agreement_is_measured``: 99.0 %
``too_few_words``, 97.6 % ``word_length``, 95.4 % ``symbol_ratio``, mostly code-like docstrings
and the hostile fixtures) and may not fall below that; C4QualityFilter states no rule gptops
has. Matching them means counting words as Gopher does (issue 26, item 4).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

pytest.importorskip("datatrove", reason="datatrove (dev extra) is the oracle")
pytest.importorskip("spacy", reason="datatrove's English word tokenizer needs spaCy")

from datatrove.data import Document  # noqa: E402
from datatrove.pipeline.filters import (  # noqa: E402
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)

from bench.webpages import make_pages  # noqa: E402
from gpt.config import CleanConfig, load_params  # noqa: E402
from gpt.data.clean import features, normalize_batch  # noqa: E402
from gpt.data.clean.features import _PUNCT_MULTI  # noqa: E402
from gpt.data.clean.filters import BY_NAME, Batch  # noqa: E402
from gpt.data.sources import read_source  # noqa: E402
from gpt.data.web import extract_main_text  # noqa: E402
from tests.conftest import PROJECT_ROOT, data_config  # noqa: E402
from tests.reliability.test_hostile_corpus import CLEAN, MOJIBAKE  # noqa: E402
from tests.unit.test_clean_property import TRICKY  # noqa: E402

pytestmark = pytest.mark.timeout(300)
AGREEMENT = 0.995
CFG = load_params(PROJECT_ROOT / "params.yaml").clean
#: gptops's line-ending punctuation (``features._byte_class`` and ``_PUNCT_MULTI``).
LINE_END = tuple(".!?:;\"')]}>") + _PUNCT_MULTI


def _documents() -> list[str]:
    """Normalised, non-empty texts: built-in sample, web pages and their variants, fixtures."""
    rng = np.random.default_rng(0)
    builtin = read_source(data_config("builtin", max_docs=1000))["text"].tolist()
    pages = [extract_main_text(p.html) for p in make_pages(150, seed=11)]
    # Web-like variants: list pages (lines without punctuation), repeated menus, short pages.
    lists = ["\n".join(rng.choice(["Home", "About us", "Contact", "Read more", "Products"],
                                  size=int(rng.integers(3, 30)))) for _ in range(60)]
    repeats = [p + "\n" + "\n".join(["Share this article"] * int(rng.integers(1, 12)))
               for p in pages[:80]]
    tricky = ["".join(rng.choice(TRICKY, size=int(rng.integers(5, 60)))) for _ in range(200)]
    hostile = [bad for bad, _ in MOJIBAKE] + CLEAN
    texts = builtin + pages + lists + repeats + tricky + hostile
    out = normalize_batch(pa.array(texts, type=pa.large_string())).to_pylist()
    return [t for t in out if t]


DOCS = _documents()


def _gptops(rule: str, cfg: CleanConfig) -> np.ndarray:
    """Whether gptops's rule (alone, every document judged) rejects each document."""
    arr = pa.array(DOCS, type=pa.large_string())
    batch = Batch(arr, features(arr), np.ones(len(DOCS), dtype=bool))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(BY_NAME[rule].rejects(batch, cfg), dtype=bool)


def _datatrove(f: object) -> np.ndarray:
    return np.array([f.filter(Document(text=t, id=str(i))) is not True  # type: ignore[attr-defined]
                     for i, t in enumerate(DOCS)])


def _agreement(rule: str, ours: np.ndarray, theirs: np.ndarray) -> float:
    differ = np.flatnonzero(ours != theirs)
    share = 1 - len(differ) / len(DOCS)
    print(f"{rule}: {share:.4f} agreement over {len(DOCS)} documents "
          f"({int(ours.sum())} rejected by gptops, {int(theirs.sum())} by datatrove)")
    for i in differ[:10].tolist():
        print(f"  {'gptops' if ours[i] else 'datatrove'} rejects: {DOCS[i][:120]!r}")
    return share


_OFF_REPETITION = {"dup_para_frac": None, "dup_para_char_frac": None,
                   "dup_line_char_frac": None, "top_n_grams": (), "dup_n_grams": ()}
_OFF_FINEWEB = {"short_line_thr": 1.0, "char_duplicates_ratio": 1.0, "new_line_ratio": 1e9}


@pytest.mark.parametrize("threshold", [None, 0.1])
def test_repeated_lines_agree_with_gopher_repetition(threshold: float | None) -> None:
    cfg = CFG if threshold is None else CFG.model_copy(update={"max_dup_line_fraction": threshold})
    theirs = _datatrove(GopherRepetitionFilter(dup_line_frac=cfg.max_dup_line_fraction,
                                               **_OFF_REPETITION))
    assert _agreement("repeated_lines", _gptops("repeated_lines", cfg), theirs) >= AGREEMENT


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_line_punctuation_agrees_with_fineweb_quality(threshold: float | None) -> None:
    cfg = CFG if threshold is None else CFG.model_copy(
        update={"min_punct_line_fraction": threshold})
    theirs = _datatrove(FineWebQualityFilter(line_punct_thr=cfg.min_punct_line_fraction,
                                             stop_chars=LINE_END, **_OFF_FINEWEB))
    assert _agreement("line_punctuation", _gptops("line_punctuation", cfg), theirs) >= AGREEMENT


_OFF_GOPHER = {"min_doc_words": None, "max_doc_words": None, "min_avg_word_length": None,
               "max_avg_word_length": None, "max_symbol_word_ratio": None,
               "max_bullet_lines_ratio": None, "max_ellipsis_lines_ratio": None,
               "max_non_alpha_words_ratio": None, "min_stop_words": None}


def test_word_rules_agreement_is_measured() -> None:
    # FineWeb's Gopher thresholds where gptops's defaults would reject almost nothing.
    cfg = CFG.model_copy(update={"min_words": 50, "max_mean_word_length": 10.0})
    rules = {
        "too_few_words": {"min_doc_words": cfg.min_words},
        "word_length": {"min_avg_word_length": cfg.min_mean_word_length,
                        "max_avg_word_length": cfg.max_mean_word_length},
        "symbol_ratio": {"max_symbol_word_ratio": cfg.max_symbol_ratio},
    }
    measured = {}
    for rule, on in rules.items():
        theirs = _datatrove(GopherQualityFilter(**{**_OFF_GOPHER, **on}))
        measured[rule] = _agreement(rule, _gptops(rule, cfg), theirs)
    print(pd.Series(measured).to_string())
    # Measured when this test was written (0.990, 0.976, 0.954 over 1,505 documents, Python
    # 3.11.7), less a point of slack (another Python version reads other docstrings).
    floor = {"too_few_words": 0.98, "word_length": 0.965, "symbol_ratio": 0.94}
    assert all(measured[r] >= floor[r] for r in rules), measured
