"""Continue pretraining a GPT-2 checkpoint: its tokenizer makes the data, its weights the start.

One small workspace: the data stages run first with the built-in BPE, then with the
checkpoint's tokenizer (``tokenizer.pretrained``: DVC re-runs tokenize only, and the data version
changes), then ``pretrain_step`` trains a few steps from ``model.init_from``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import DATA_OVERRIDES, RUN_OVERRIDES, make_workspace
from tests.unit.test_hf import make_gpt2_folder

pytestmark = pytest.mark.slow

STEPS = 4


def test_pretrain_continues_from_a_gpt2_checkpoint(tmp_path):
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from gpt import checkpoint as ckpt_io
    from gpt import hf
    from gpt.config import load_params
    from gpt.data.loader import TokenData, is_val_doc
    from gpt.data.shards import read_parts
    from gpt.dvc_repo import data_version, run_stage
    from gpt.params_file import apply_data_overrides
    from gpt.pipeline.context import RunContext
    from gpt.pipeline.steps import pretrain_step
    from gpt.train import initial_model

    ckpt = make_gpt2_folder(tmp_path / "tiny-gpt2")  # 2 layers, 64 wide, 128 positions
    spec = f"hf:{ckpt}"
    ws = make_workspace(tmp_path / "ws", DATA_OVERRIDES)
    assert [run_stage(ws, s).ran for s in ("ingest", "clean", "tokenize")] == [True] * 3
    bpe_version = data_version(ws)

    apply_data_overrides(ws, [f"tokenizer.pretrained={spec}"])
    assert [run_stage(ws, s).ran for s in ("ingest", "clean", "tokenize")] == \
        [False, False, True]
    version = data_version(ws)
    assert version != bpe_version

    # The shards hold the checkpoint tokenizer's ids: the first training document, exactly.
    tokens = ws / "data" / "tokens"
    meta = json.loads((tokens / "meta.json").read_text())
    ref = AutoTokenizer.from_pretrained(ckpt)
    assert meta["vocab_size"] == len(ref) and meta["eot_id"] == ref.eos_token_id
    assert meta["pretrained_tokenizer"] == hf.tokenizer_digest(spec)
    docs = read_parts(ws / "data" / "clean", "clean")
    first = next(t for d, t in zip(docs.doc_id, docs.text, strict=True)
                 if not is_val_doc(d, 0.05, 1337))
    want = ref(first)["input_ids"]
    train = np.fromfile(tokens / "train-00000.bin", dtype=meta["dtype"])
    assert train[:len(want)].tolist() == want and train[len(want)] == ref.eos_token_id
    assert ref.decode(train[:len(want)].tolist()) == first

    params = load_params(ws / "params.yaml", overrides=[
        *RUN_OVERRIDES, f"model.init_from={spec}", f"train.max_steps={STEPS}",
        "train.eval_interval=2", "train.checkpoints=2", "train.lr=0.001",
        "train.warmup_steps=1"])
    assert params.tokenizer.pretrained == spec  # written into the workspace's params.yaml
    # Step 0, the model pretraining starts from, is the checkpoint (shorter context: 64).
    theirs = GPT2LMHeadModel.from_pretrained(ckpt).eval()
    start = initial_model(params.model, TokenData(tokens)).eval()
    x = torch.from_numpy(train[:64].astype(np.int64))[None]
    with torch.no_grad():
        ours = start.logits(start.hidden_states(x)[0])
        assert (ours - theirs(x).logits).abs().max() < 1e-4

    result = pretrain_step(RunContext.of(ws, params, data_version=version))
    assert result.steps == STEPS and not result.reused and np.isfinite(result.loss)
    trained = hf.load_checkpoint(spec, block_size=64)
    ckpt_io.load_weights(trained, ws / ".gptops" / "runs" / "pretrain" / result.key /
                         "model.safetensors")
    with torch.no_grad():
        moved = max(float((a - b).abs().max()) for a, b in
                    zip(trained.parameters(), start.parameters(), strict=True))
    print(f"largest weight change after {STEPS} steps: {moved:.4f}")
    # Trained (it moved), from the checkpoint (a few AdamW steps of lr 1e-3 stay close to it,
    # while a fresh init is ~0.2 away from these weights everywhere).
    assert 0 < moved < 0.05
    assert json.loads((ws / ".gptops" / "runs" / "pretrain" / result.key / "key.json")
                      .read_text())["model"]["init_from"] == hf.checkpoint_digest(spec)
