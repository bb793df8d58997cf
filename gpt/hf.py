"""Interop with ``transformers``: export to / import from GPT-2 classes with logits parity.

Our ``Linear`` weights are (out, in); GPT-2's ``Conv1D`` stores (in, out), hence the transposes.
Models without bias export zero biases (GPT-2 always has them).
"""

from __future__ import annotations

import torch

from gpt.model import GPT, GPTConfig

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_config(cfg: GPTConfig, eot_id: int, pad_id: int, num_labels: int | None = None,
              id2label: dict[int, str] | None = None):  # -> transformers.GPT2Config
    from transformers import GPT2Config

    extra = {}
    if num_labels is not None:
        extra = {"num_labels": num_labels, "id2label": id2label,
                 "label2id": {v: k for k, v in (id2label or {}).items()}}
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function="gelu_new",
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        layer_norm_epsilon=1e-5, bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=pad_id,
        tie_word_embeddings=True, **extra)


def _body_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our body's state dict under GPT-2 names, biases filled with zeros where absent."""
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        name = k.replace("transformer.", "", 1)
        out[name] = v.t().contiguous() if k.endswith(_CONV1D) else v.clone()
    C = model.config.n_embd
    zeros = {"ln_1.bias": C, "ln_2.bias": C, "attn.c_attn.bias": 3 * C, "attn.c_proj.bias": C,
             "mlp.c_fc.bias": 4 * C, "mlp.c_proj.bias": C}
    for i in range(model.config.n_layer):
        for suffix, size in zeros.items():
            out.setdefault(f"h.{i}.{suffix}", torch.zeros(size))
    out.setdefault("ln_f.bias", torch.zeros(C))
    return out


def to_hf_lm(model: GPT, eot_id: int, pad_id: int):  # -> transformers.GPT2LMHeadModel
    """A ``GPT2LMHeadModel`` with our weights."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(hf_config(model.config, eot_id, pad_id))
    missing, unexpected = hf.transformer.load_state_dict(_body_to_hf(model), strict=False)
    assert not unexpected, unexpected
    assert all(".attn.bias" in m or ".attn.masked_bias" in m for m in missing), missing
    hf.tie_weights()
    return hf.eval()


def to_hf_classifier(body: GPT, score: torch.nn.Linear, labels: list[str], eot_id: int,
                     pad_id: int):  # -> transformers.GPT2ForSequenceClassification
    """A ``GPT2ForSequenceClassification`` (last non-pad token pooling, like ours)."""
    from transformers import GPT2ForSequenceClassification

    cfg = hf_config(body.config, eot_id, pad_id, num_labels=len(labels),
                    id2label=dict(enumerate(labels)))
    hf = GPT2ForSequenceClassification(cfg)
    missing, unexpected = hf.transformer.load_state_dict(_body_to_hf(body), strict=False)
    assert not unexpected, unexpected
    with torch.no_grad():
        hf.score.weight.copy_(score.weight)
    return hf.eval()


def from_hf_lm(hf) -> GPT:
    """Our ``GPT`` from a ``GPT2LMHeadModel`` (e.g. one loaded from the registry)."""
    c = hf.config
    model = GPT(GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer,
                          n_head=c.n_head, n_embd=c.n_embd, dropout=0.0, bias=True))
    src = hf.transformer.state_dict()
    sd = {}
    for k in model.state_dict():
        if k.startswith("lm_head"):
            continue
        name = k.replace("transformer.", "", 1)
        v = src[name]
        sd[k] = v.t().contiguous() if k.endswith(_CONV1D) else v
    model.load_state_dict(sd, strict=False)
    return model.eval()
