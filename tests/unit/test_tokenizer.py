"""Tokenizer round trip, HF loading, token shards split by document."""

import json

import numpy as np
import torch

from gpt.data.loader import TokenData, is_val_doc, step_generator, write_token_shards
from gpt.data.tokenizer import EOT, load_hf_tokenizer, save_tokenizer, train_tokenizer

TEXTS = [f"Return the {w} of the object number {i}. Raises ValueError if it is négatif ✓."
         for i, w in enumerate(["length", "value", "name", "type", "size"] * 40)]


def test_round_trip_and_hf_loading(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=400)
    text = "Return the naïve value 😀\n\tindented"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: nothing is unknown
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    hf = load_hf_tokenizer(tmp_path / "tokenizer.json")
    assert hf(text)["input_ids"] == tok.encode(text).ids
    assert hf.eos_token == EOT and hf.pad_token_id != hf.eos_token_id


def test_shards_split_by_document(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=400)
    ids = [f"doc{i}" for i in range(len(TEXTS))]
    meta = write_token_shards(TEXTS, ids, tok, tmp_path, val_fraction=0.2, seed=1)
    assert meta["dtype"] == "uint16"
    n_val = sum(is_val_doc(d, 0.2, 1) for d in ids)
    assert meta["val_docs"] == n_val and meta["train_docs"] == len(ids) - n_val
    assert [s["file"] for s in meta["shards"]["val"]] == ["val-00000.bin"]
    val = np.memmap(tmp_path / "val-00000.bin", dtype=np.uint16, mode="r")
    eot = tok.token_to_id(EOT)
    assert int((val == eot).sum()) == n_val  # each val document ends with one EOT
    expected = sum(len(tok.encode(t).ids) + 1 for t, d in zip(TEXTS, ids, strict=True)
                   if is_val_doc(d, 0.2, 1))
    assert len(val) == expected == meta["val_tokens"]
    assert json.loads((tmp_path / "meta.json").read_text())["vocab_size"] == tok.get_vocab_size()


def test_batches_are_deterministic_per_step(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=400)
    write_token_shards(TEXTS, [str(i) for i in range(len(TEXTS))], tok, tmp_path, 0.2, 1)
    data = TokenData(tmp_path)
    a = data.batch("train", 4, 16, step_generator(7, 3))
    b = data.batch("train", 4, 16, step_generator(7, 3))
    c = data.batch("train", 4, 16, step_generator(7, 4))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    assert torch.equal(a[0][:, 1:], a[1][:, :-1])  # targets are inputs shifted by one
