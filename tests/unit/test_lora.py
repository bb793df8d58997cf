"""LoRA adapters: start from the base exactly, train only adapters, merge back losslessly."""

import torch

from gpt.lora import LoRALinear, apply_lora, merge_lora
from tests.unit.test_model import full_logits, tiny


def test_lora_starts_at_the_base_and_trains_only_adapters():
    m = tiny()
    x = torch.randint(0, 97, (2, 12))
    before = full_logits(m, x)
    trainable = apply_lora(m, r=4, alpha=8)
    assert torch.allclose(full_logits(m, x), before)  # B = 0: identical at start
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert trainable == sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)


def test_merge_folds_the_update_into_plain_linear_layers():
    m = tiny()
    apply_lora(m, r=4, alpha=8)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, LoRALinear):
                mod.lora_b.normal_(0, 0.1)
    x = torch.randint(0, 97, (2, 12))
    adapted = full_logits(m, x)
    merge_lora(m)
    assert not any(isinstance(mod, LoRALinear) for mod in m.modules())
    assert torch.allclose(full_logits(m, x), adapted, atol=1e-5)
    assert set(m.state_dict()) == set(tiny().state_dict())  # exports like any GPT


def test_lora_finetune_saves_a_plain_classifier_whose_attention_changed(tmp_path):
    import pandas as pd

    from gpt import checkpoint as ckpt
    from gpt.config import load_params
    from gpt.data.tokenizer import PAD, train_tokenizer
    from gpt.finetune import GPTClassifier, TaskData, finetune_classifier
    from tests.conftest import PROJECT_ROOT

    texts = [f"item {i} is {'red' if i % 2 else 'blue'}" for i in range(40)]
    tok = train_tokenizer(texts * 3, vocab_size=300)
    frame = pd.DataFrame({"doc_id": [str(i) for i in range(40)], "text": texts,
                          "label": [i % 2 for i in range(40)]})
    task = TaskData(train=frame, test=frame.head(4), labels=["blue", "red"])
    cfg = load_params(PROJECT_ROOT / "params.yaml").finetune.model_copy(
        update=dict(max_steps=6, batch_size=8, warmup_steps=1, lora_rank=2))
    m = tiny(vocab=tok.get_vocab_size())
    mlp_before = m.transformer.h[0].mlp.c_fc.weight.clone()
    attn_before = m.transformer.h[0].attn.c_attn.weight.clone()
    finetune_classifier(m, tok, task, cfg, tmp_path, device_name="cpu")
    fresh = GPTClassifier(tiny(vocab=tok.get_vocab_size()), 2, tok.token_to_id(PAD))
    ckpt.load_weights(fresh, tmp_path / "model.safetensors")  # plain names: no adapters left
    assert torch.equal(fresh.body.transformer.h[0].mlp.c_fc.weight, mlp_before)  # frozen
    assert not torch.equal(fresh.body.transformer.h[0].attn.c_attn.weight, attn_before)
