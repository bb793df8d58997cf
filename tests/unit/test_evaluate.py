"""Evaluation reports: confusion matrix, per-class table, image, comparison with the champion."""


import pytest

from gpt import evaluate as ev

LABELS = ["asyncio", "email", "xml"]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 2, 2, 2, 0]


def test_confusion_matrix_counts_true_by_predicted():
    cm = ev.confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert sum(map(sum, cm)) == len(Y_TRUE)


def test_per_class_table_matches_metrics():
    metrics = ev.classification_metrics(Y_TRUE, Y_PRED, LABELS)
    rows = ev.per_class_table(metrics, LABELS, ev.confusion_matrix(Y_TRUE, Y_PRED, 3))
    assert [r["label"] for r in rows] == LABELS
    assert [r["support"] for r in rows] == [3, 2, 3]
    assert rows[0]["precision"] == round(2 / 3, 4) and rows[0]["recall"] == round(2 / 3, 4)
    assert rows[1] == {"label": "email", "support": 2, "precision": 0.5, "recall": 0.5,
                       "f1": 0.5}


def test_plot_confusion_matrix_writes_png(tmp_path):
    path = ev.plot_confusion_matrix([[2, 1, 0], [0, 1, 1], [1, 0, 2]], LABELS,
                                    tmp_path / "sub" / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 2000


@pytest.mark.parametrize("text, normalised", [
    # SQuAD's evaluate-v1.1.py: lower, drop punctuation, drop a/an/the, collapse whitespace
    ("The Eiffel Tower.", "eiffel tower"),
    ("An apple, a pear & THE plum!", "apple pear plum"),
    ("theatre another anthem", "theatre another anthem"),  # articles only as whole words
    ("1,000 don't co-op", "1000 dont coop"),  # punctuation removed, not made a space
    ("  in\tthe\n middle ", "in middle"),
    ("the", ""),
])
def test_squad_normalisation_is_the_official_scripts(text, normalised):
    assert ev.squad_normalize(text) == normalised


@pytest.mark.parametrize("prediction, reference, em, f1", [
    ("The Eiffel Tower.", "eiffel tower", 1.0, 1.0),
    ("the big red dog", "a red dog", 0.0, 0.8),  # 2 shared: P 2/3, R 1
    ("red red red", "red", 0.0, 0.5),  # shared counts are clipped: P 1/3, R 1
    ("dark red", "red", 0.0, 2 / 3),
    ("blue", "red", 0.0, 0.0),
    ("the", "a", 1.0, 0.0),  # both normalise to "": equal, but v1.1's F1 has no shared token
])
def test_squad_exact_match_and_f1_by_hand(prediction, reference, em, f1):
    m = ev.squad([prediction], [reference])
    assert m == {"exact_match": em, "token_f1": pytest.approx(f1)}


def test_generation_metrics_follow_the_task_type():
    from gpt.config import SFTConfig
    from gpt.kinds import SFT, SFT_TASK_METRICS

    preds, refs = ["Return the value.", "nothing"], ["Return the value.", "x y"]
    m = ev.generation_metrics(preds, refs, "generic")
    assert m["exact_match"] == 0.5 and m["token_f1"] == 0.5 and m["rouge_l"] == 0.5
    assert m["rouge_1"] == 0.5 and m["rouge_2"] == 0.5
    for task_type, names in SFT_TASK_METRICS.items():
        got = ev.generation_metrics(preds, refs, task_type)
        assert list(got) == list(names) and got == {k: m[k] for k in names}
    assert set(SFT_TASK_METRICS["generic"]) == set().union(*SFT_TASK_METRICS.values()) \
        == set(SFT.metrics)
    assert set(SFTConfig.model_fields["task_type"].annotation.__args__) == set(SFT_TASK_METRICS)
    with pytest.raises(ValueError, match="one prediction per reference"):
        ev.generation_metrics(["a"], ["a", "b"], "qa")


def test_rouge_is_rouge_scores():
    # ROUGE-L F: LCS 5 of 6 predicted and 5 of 5 reference words
    assert ev.rouge(["the cat sat on the mat"], ["the cat on the mat"])["rouge_l"] == \
        pytest.approx(2 * (5 / 6) * 1.0 / (5 / 6 + 1.0))
    # rouge-score's tokenizer splits on punctuation: dotted names count word by word
    assert ev.rouge(["os.path.join"], ["join paths"])["rouge_1"] == pytest.approx(
        2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_bleu_and_chrf_are_sacrebleus_corpus_scores():
    """Corpus-level (not a mean of sentence scores), one reference stream, 0-100."""
    import sacrebleu

    hyps = ["the cat sat on the mat today", "a dog ran in the park", "nothing at all"]
    refs = ["the cat sat on a mat today", "the dog ran in the park", "something else here"]
    m = ev.bleu_chrf(hyps, refs)
    assert m["bleu"] == pytest.approx(sacrebleu.metrics.BLEU().corpus_score(hyps, [refs]).score)
    assert m["chrf"] == pytest.approx(sacrebleu.metrics.CHRF().corpus_score(hyps, [refs]).score)
    sentence_mean = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(
        hyps, refs, strict=True)) / len(hyps)
    assert 0 < m["bleu"] < 100 and m["bleu"] != pytest.approx(sentence_mean)
    assert ev.bleu_chrf(refs, refs) == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}


def test_sklearn_metrics_equal_the_hand_written_ones_they_replace():
    """Parity with the metrics computed before scikit-learn (written out here by hand)."""
    m = ev.classification_metrics(Y_TRUE, Y_PRED, LABELS)
    assert m["accuracy"] == 5 / 8
    f1 = {"asyncio": 2 / 3, "email": 0.5, "xml": 2 / 3}
    for name, value in f1.items():
        assert m[f"f1_{name}"] == pytest.approx(value)
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    # a label never true nor predicted scores 0 and still counts in the macro average
    m4 = ev.classification_metrics(Y_TRUE, Y_PRED, [*LABELS, "http"])
    assert m4["f1_http"] == 0.0 and m4["macro_f1"] == pytest.approx(sum(f1.values()) / 4)
    assert ev.confusion_matrix(Y_TRUE, Y_PRED, 4)[3] == [0, 0, 0, 0]


def test_docsummary_task_pairs_names_with_first_sentences():
    import pandas as pd

    from gpt.finetune import build_docsummary_task, first_sentence

    assert first_sentence("Return the sum.  More text.\n\nDetails.") == "Return the sum."
    docs = pd.DataFrame({
        "doc_id": [f"d{i}" for i in range(30)], "source": "builtin",
        "name": [f"mod.func{i}" for i in range(29)] + ["topic:x"],
        "text": [f"Compute thing number {i} quickly. Then more.\n\nArgs: x" for i in range(30)]})
    task = build_docsummary_task(docs, 0.3, seed=1)
    pairs = task.train + task.test
    assert len(pairs) == 29 and ("mod.func3:\n", "Compute thing number 3 quickly.") in pairs
    assert {p for p, _ in task.train}.isdisjoint({p for p, _ in task.test})
