"""Classification tasks: the built-in package task and users' own labelled files."""

import json

import pandas as pd
import pytest
import torch

from gpt.data.tokenizer import train_tokenizer
from gpt.errors import DataError
from gpt.finetune import build_file_task, build_package_task, encode_texts, predict, read_task_file


def rows(n_per: int = 10, labels=("pos", "neg", "neutral")) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review {i} is {lab} {'!' * (i % 3)}" for lab in labels
                                  for i in range(n_per)],
                         "label": [lab for lab in labels for _ in range(n_per)]})


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_user_file_becomes_a_stable_split_task(tmp_path, suffix):
    path = tmp_path / f"task{suffix}"
    df = rows()
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    else:
        df.to_parquet(path)
    task = build_file_task(read_task_file(path), str(path), 0.3, seed=1)
    again = build_file_task(read_task_file(path), str(path), 0.3, seed=1)
    assert task.labels == sorted(set(df.label))
    assert len(task.train) + len(task.test) == len(df)
    assert set(task.train.text).isdisjoint(task.test.text)
    assert task.eval_hash() == again.eval_hash()


@pytest.mark.parametrize("df, message", [
    (pd.DataFrame({"text": ["a", "b"], "label": ["x", ""]}), "empty label"),
    (pd.DataFrame({"text": ["a"] * 8, "label": ["x"] * 8}), "at least two classes"),
    (pd.DataFrame({"text": [f"t{i}" for i in range(9)], "label": ["x"] * 8 + ["y"]}),
     "fewer than"),
    (pd.DataFrame({"text": ["", "b"] * 4, "label": ["x", "y"] * 4}), "empty text"),
])
def test_bad_labels_are_rejected_with_the_reason(df, message):
    with pytest.raises(DataError, match=message):
        build_file_task(df, "mine.csv", 0.3, seed=1)


def test_missing_file_or_column(tmp_path):
    with pytest.raises(DataError, match="is not a file"):
        read_task_file(tmp_path / "nope.csv")
    (tmp_path / "t.csv").write_text("body,label\nx,1\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['text'\]"):
        read_task_file(tmp_path / "t.csv")


def test_package_task_masks_the_label_name():
    docs = pd.DataFrame({
        "doc_id": [f"d{i}" for i in range(20)], "source": "builtin",
        "name": [f"{'asyncio' if i % 2 else 'email'}.mod.f{i}" for i in range(20)],
        "text": [f"The asyncio loop and the email parser, part {i}." for i in range(20)]})
    task = build_package_task(docs, ["asyncio", "email"], 0.3, seed=2)
    both = pd.concat([task.train, task.test])
    assert not both.text.str.contains("asyncio|email", case=False).any()
    assert both.text.str.contains("<pkg>").all()


def test_padding_does_not_change_predictions():
    from gpt.finetune import GPTClassifier
    from gpt.model import GPT, GPTConfig

    tok = train_tokenizer(rows().text.tolist() * 3, vocab_size=300)
    torch.manual_seed(0)
    body = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2,
                         n_embd=16))
    clf = GPTClassifier(body, 3, pad_id=1).eval()
    ids_a, len_a = encode_texts(tok, ["review 1 is pos"], 16)
    ids_b, len_b = encode_texts(tok, ["review 1 is pos"], 32)
    with torch.no_grad():
        assert torch.allclose(clf(ids_a, len_a), clf(ids_b, len_b), atol=1e-5)
    assert predict(clf, ids_a, len_a).shape == (1,)


def test_separate_test_file_reports_unseen_labels():
    from gpt.finetune import with_test_file

    task = build_file_task(rows(), "train.csv", 0.3, seed=1)
    test = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": ["pos", "sarcastic", "neg",
                                                                  "sarcastic"]})
    full = with_test_file(task, test, "test.csv")
    assert full.unseen == {"sarcastic": 2}
    assert len(full.train) == len(rows()) and len(full.test) == 2
    assert [full.labels[i] for i in full.test.label] == ["pos", "neg"]
    with pytest.raises(DataError, match="no test row has a label seen in training"):
        with_test_file(task, test[test.label == "sarcastic"], "test.csv")
