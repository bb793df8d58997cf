"""Decontamination: a training document sharing a 13-word n-gram with an evaluation item is
rejected as ``contaminated=<eval set>`` and counted per set; the evaluation sets come from the
benchmark task folders and the fine-tuning/SFT files, read as the evaluations read them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt.config import load_params
from gpt.data.clean import clean_documents, render_report
from gpt.data.clean.decontam import build, eval_sets, load
from gpt.data.records import DOC_COLUMNS
from gpt.errors import DataError
from tests.unit import reference_clean as ref

ROOT = Path(__file__).resolve().parents[2]
CFG = load_params(ROOT / "params.yaml").clean.model_copy(update={"near_dedup": False})
VOCAB = ["river", "stone", "market", "energy", "garden", "signal", "harbor", "lantern", "copper",
         "meadow", "orbit", "violet", "thunder", "pencil", "the", "of", "and", "to", "with"]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _prose(rng: random.Random, words: int) -> str:
    out, left = [], words
    while left > 0:
        k = min(left, rng.randint(8, 14))
        out.append(_sentence(rng, k).capitalize() + ".")
        left -= k
    return " ".join(out)


def _frame(texts: list[str]) -> pd.DataFrame:
    ids = [f"d{i}" for i in range(len(texts))]
    return pd.DataFrame({"doc_id": ids, "source": "t", "name": ids, "text": texts},
                        columns=DOC_COLUMNS)


def _workspace(tmp_path: Path) -> tuple[Path, list[str], list[str], list[str]]:
    """A task folder (a YAML naming its JSONL data), a classifier file with a test file, and an
    SFT pairs file; their items."""
    rng = random.Random(7)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    bench = [_prose(rng, 30) for _ in range(6)]
    (tasks / "items.jsonl").write_text("".join(
        json.dumps({"question": q, "choices": ["yes", "no"], "label": 0}) + "\n"
        for q in bench))
    (tasks / "mine.yaml").write_text(
        f"task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: "
        f"{tasks / 'items.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: 0\n")
    train = pd.DataFrame({"text": [_prose(rng, 20) for _ in range(40)],
                          "label": [i % 2 for i in range(40)]})
    train.to_csv(tmp_path / "train.csv", index=False)
    test = [_prose(rng, 25) for _ in range(4)]
    pd.DataFrame({"text": test, "label": [0, 1, 0, 1]}).to_csv(tmp_path / "test.csv",
                                                              index=False)
    pairs = [(f"Summarise item {i}:", _prose(rng, 16)) for i in range(60)]
    with open(tmp_path / "pairs.jsonl", "w") as fh:
        for p, c in pairs:
            fh.write(json.dumps({"prompt": p, "completion": c}) + "\n")
    return tasks, bench, test, [f"{p}\n{c}" for p, c in pairs]


def _params(tmp_path: Path, tasks: Path) -> object:
    return load_params(ROOT / "params.yaml", overrides=[
        f"evaluate.benchmark_dirs=[{tasks}]", "finetune.task=file",
        f"finetune.task_path={tmp_path / 'train.csv'}",
        f"finetune.test_path={tmp_path / 'test.csv'}", "sft.task=file",
        f"sft.task_path={tmp_path / 'pairs.jsonl'}"])


def test_planted_ngrams_are_rejected_per_eval_set(tmp_path: Path) -> None:
    tasks, bench, test, pairs = _workspace(tmp_path)
    params = _params(tmp_path, tasks)
    sets = dict(eval_sets(params))
    assert sets["bench:mine"][0].startswith(bench[0])  # the record's strings, joined
    assert sets["finetune_test"] == test
    sft_test = sets["sft_test"]
    assert 0 < len(sft_test) < len(pairs) and set(sft_test) <= set(pairs)
    rng = random.Random(1)

    def planted(item: str, words: int, noisy: bool = False) -> str:
        w = item.split()
        start = rng.randrange(0, len(w) - words + 1)
        gram = w[start:start + words]
        if noisy:  # case and punctuation do not hide a copy
            gram = [x.upper().strip(".") + ("," if i % 3 == 0 else "") for i, x in enumerate(gram)]
        return f"{_prose(rng, 40)} {' '.join(gram)} {_prose(rng, 30)}"

    texts = [planted(bench[0], 13), planted(bench[1], 20, noisy=True), planted(test[0], 13),
             planted(sft_test[0].split("\n", 1)[1], 13), planted(bench[2], 12),
             _prose(rng, 80)]
    res = clean_documents(_frame(texts), CFG, load(params))
    reasons = dict(zip(res.rejected["doc_id"], res.rejected["reason"], strict=True))
    assert reasons == {"d0": "contaminated=bench:mine", "d1": "contaminated=bench:mine",
                       "d2": "contaminated=finetune_test", "d3": "contaminated=sft_test"}
    assert res.stats["contaminated_by_eval_set"] == {"bench:mine": 2, "finetune_test": 1,
                                                     "sft_test": 1}
    assert "| bench:mine | 2 |" in render_report(res.stats)
    for i, text in enumerate(texts):  # the plain statement agrees
        found = ref.contamination(text, list(sets.items()), CFG.decontaminate_ngram)
        assert (f"contaminated={found}" if found else None) == reasons.get(f"d{i}")


def test_off_and_unconfigured(tmp_path: Path) -> None:
    tasks, *_ = _workspace(tmp_path)
    assert load(load_params(ROOT / "params.yaml")) is None  # the default run checks nothing
    off = load_params(ROOT / "params.yaml", overrides=[f"evaluate.benchmark_dirs=[{tasks}]",
                                                       "clean.decontaminate_ngram=0"])
    assert load(off) is None


def test_unreadable_eval_data_is_one_clear_error(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "broken.jsonl").write_text("{not json\n")
    params = load_params(ROOT / "params.yaml", overrides=[f"evaluate.benchmark_dirs=[{tasks}]"])
    with pytest.raises(DataError, match="broken.jsonl"):
        load(params)


WORDS = st.sampled_from(VOCAB + ["River", "STONE", "market,", "(energy)", "garden."])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.lists(st.lists(WORDS, min_size=1, max_size=20).map(" ".join), max_size=4),
                min_size=1, max_size=3),
       st.lists(st.lists(WORDS, max_size=60).map(" ".join), min_size=1, max_size=12),
       st.integers(2, 6))
def test_find_matches_the_plain_statement(items: list[list[str]], texts: list[str],
                                          n: int) -> None:
    sets = [(f"s{i}", it) for i, it in enumerate(items)]
    evals = build(sets, n)
    found = evals.find(texts)
    for text, f in zip(texts, found.tolist(), strict=True):
        assert (evals.names[f] if f >= 0 else None) == ref.contamination(text, sets, n), text


def test_the_clean_stage_counts_per_eval_set_and_reruns_when_an_item_changes(
        tmp_path: Path) -> None:
    from gpt.data import stages

    tasks, bench, *_ = _workspace(tmp_path)
    rng = random.Random(3)
    docs = [{"text": f"{_prose(rng, 30)} {' '.join(bench[i].split()[:13])} {_prose(rng, 30)}"}
            for i in range(3)] + [{"text": _prose(rng, 60)} for _ in range(5)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    ws = tmp_path / "ws"
    params = load_params(ROOT / "params.yaml", overrides=[
        f"data.source={tmp_path / 'corpus.jsonl'}", f"evaluate.benchmark_dirs=[{tasks}]",
        "clean.near_dedup=false"])
    stages.ingest(params, ws)
    stats = stages.clean(params, ws, workers=1)
    assert stats["contaminated_by_eval_set"] == {"bench:mine": 3}
    assert json.loads((ws / "data" / "clean_stats.json").read_text())[
        "contaminated_by_eval_set"] == {"bench:mine": 3}
    assert "| bench:mine | 3 |" in (ws / "data" / "clean" / "report.md").read_text()
    # Editing an item (its n-grams) changes what cleaning finds: the stage's fingerprint holds
    # the evaluation sets, so a partial output of the earlier sets is not reused.
    lines = (tasks / "items.jsonl").read_text().splitlines()
    (tasks / "items.jsonl").write_text("\n".join(lines[2:]) + "\n")
    assert stages.clean(params, ws, workers=1)["contaminated_by_eval_set"] == {"bench:mine": 1}
