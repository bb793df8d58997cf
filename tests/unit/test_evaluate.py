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


def test_generation_metrics_exact_f1_rouge():
    from gpt.evaluate import generation_metrics, rouge_l, token_f1

    assert token_f1("Return the value", "return the value") == 1.0
    assert token_f1("a b", "c d") == 0.0
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(
        2 * (5 / 6) * 1.0 / (5 / 6 + 1.0))
    m = generation_metrics(["Return the value.", "nothing"], ["Return the value.", "x y"])
    assert m["exact_match"] == 0.5 and m["token_f1"] == 0.5 and m["rouge_l"] == 0.5


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
