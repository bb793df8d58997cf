"""GPT-2 checkpoints in and out: logits parity both ways, vocabulary padding, clear errors.

Checkpoints are built here, offline: a byte-level BPE wrapped as ``GPT2TokenizerFast`` and a
random ``GPT2LMHeadModel`` (GPT-2's architecture, 2 layers, 64 wide), both ``save_pretrained``.
Their weights are re-drawn at a larger scale (biases and LayerNorms too), so a transposed or
misplaced tensor cannot hide behind GPT-2's near-zero init.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gpt import hf
from gpt.config import load_params
from gpt.data.tokenizer import EOT
from gpt.errors import ConfigError
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"
#: RUN-sized model.* that fits make_gpt2_folder's checkpoints (block_size <= n_positions 128).
FITS = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64"]


def make_gpt2_folder(path: Path, vocab: int = 1000, n_positions: int = 128, seed: int = 0,
                     scale: float = 0.2) -> Path:
    """A GPT-2-shaped HF folder (model + tokenizer), as ``save_pretrained`` writes one."""
    from pydoc_data.topics import topics

    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(topics.values()), vocab_size=vocab, min_frequency=2,
                            special_tokens=[EOT], show_progress=False)
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOT, eos_token=EOT,
                            unk_token=EOT)
    hf.save_random_gpt2(path, vocab_size=len(tok), n_positions=n_positions,
                        eot_id=tok.convert_tokens_to_ids(EOT), seed=seed)
    model = GPT2LMHeadModel.from_pretrained(path)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_gpt2_folder(tmp_path_factory.mktemp("gpt2") / "tiny-gpt2")


def _theirs(path: Path):  # -> GPT2LMHeadModel
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(path).eval()


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model.hidden_states(x)[0])


def _ids(vocab: int, T: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(seed))


# --- parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_multiple", [1, 64])
def test_loaded_checkpoint_has_the_source_models_logits(ckpt, vocab_multiple):
    theirs = _theirs(ckpt)
    ours = hf.load_checkpoint(f"hf:{ckpt}", vocab_multiple=vocab_multiple)
    x = _ids(theirs.config.vocab_size)
    with torch.no_grad():
        ref = theirs(x).logits
    got = _logits(ours, x)
    assert got.shape == ref.shape  # the real vocabulary, padded or not
    assert (got - ref).abs().max() < 1e-4
    assert ref.abs().max() > 1  # the comparison is not between near-zero numbers


def test_a_shorter_context_keeps_parity_on_what_fits(ckpt):
    theirs = _theirs(ckpt)
    ours = hf.load_checkpoint(f"hf:{ckpt}", block_size=32)
    assert ours.transformer.wpe.weight.shape[0] == 32
    x = _ids(theirs.config.vocab_size, T=32)
    with torch.no_grad():
        assert (_logits(ours, x) - theirs(x).logits).abs().max() < 1e-4


@pytest.mark.parametrize("vocab_multiple", [1, 64])
def test_export_after_loading_matches_ours(ckpt, vocab_multiple):
    ours = hf.load_checkpoint(f"hf:{ckpt}", vocab_multiple=vocab_multiple)
    exported = hf.to_hf_lm(ours, eot_id=0, pad_id=0)
    assert exported.config.vocab_size == _theirs(ckpt).config.vocab_size  # padding not exported
    x = _ids(exported.config.vocab_size)
    with torch.no_grad():
        assert (exported(x).logits - _logits(ours, x)).abs().max() < 1e-4


def test_gpt2_vocabulary_50257_padded_to_50304(tmp_path):
    """GPT-2's real vocabulary size, padded for speed: same logits, loss and greedy tokens."""
    from transformers import GPT2LMHeadModel

    folder = hf.save_random_gpt2(tmp_path / "g", vocab_size=50257, n_positions=64)
    theirs = GPT2LMHeadModel.from_pretrained(folder).eval()
    plain = hf.load_checkpoint(f"hf:{folder}")
    padded = hf.load_checkpoint(f"hf:{folder}", vocab_multiple=64)
    assert padded.transformer.wte.weight.shape[0] == 50304
    assert plain.transformer.wte.weight.shape[0] == 50257
    x = _ids(50257, T=32)
    with torch.no_grad():
        ref = theirs(x).logits
        assert (_logits(padded, x) - ref).abs().max() < 1e-4
        loss_theirs = theirs(x, labels=x).loss
        for fused in (False, True):
            _, loss = padded(x[:, :-1], x[:, 1:], return_logits=not fused)
            assert abs(float(loss) - float(loss_theirs)) < 1e-4


def test_padded_logits_never_win_sampling_or_the_loss():
    from gpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16,
                    vocab_multiple=64)
    m = GPT(cfg).eval()
    assert m.transformer.wte.weight.shape[0] == 64
    assert torch.count_nonzero(m.lm_head.weight[50:]) == 0  # padding starts at zero
    x = torch.randint(0, 50, (2, 8))
    _, loss_before = m(x, x)
    with torch.no_grad():  # padding rows that would win every argmax if they were read
        m.lm_head.weight[50:] = m.lm_head.weight[:50].abs().sum() * 10
    logits, loss = m(x, x)
    assert logits.shape[-1] == 50 and torch.allclose(loss, loss_before)
    _, fused = m(x, x, return_logits=False)
    assert torch.allclose(fused, loss_before, atol=1e-6)
    out = m.generate(x, 8, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < 50
    assert int(m.generate(x, 8, temperature=0).max()) < 50


def test_padding_rows_get_no_gradient():
    from gpt.model import GPT, GPTConfig

    m = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16,
                      vocab_multiple=64))
    x = torch.randint(0, 50, (2, 8))
    _, loss = m(x, x, return_logits=False)
    loss.backward()
    assert torch.count_nonzero(m.lm_head.weight.grad[50:]) == 0
    assert torch.count_nonzero(m.lm_head.weight.grad[:50]) > 0


# --- shape and architecture ---------------------------------------------------------------------


def _params(ckpt: Path, *extra: str):
    spec = f"hf:{ckpt}"
    return load_params(PARAMS, overrides=[*FITS, f"model.init_from={spec}",
                                          f"tokenizer.pretrained={spec}", *extra])


def test_params_that_fit_load_and_build_the_checkpoint(ckpt):
    p = _params(ckpt, "model.dropout=0.1", "model.vocab_multiple=64")
    hf.check_model_config(p.model)
    model = hf.load_pretrained(p.model)
    assert model.config.dropout == 0.1 and model.config.block_size == 64
    assert model.transformer.wte.weight.shape[0] == 1024


@pytest.mark.parametrize("override, message", [
    ("model.n_layer=4", "model.n_layer=4 (checkpoint: 2)"),
    ("model.n_embd=128", "model.n_embd=128 (checkpoint: 64)"),
    ("model.n_head=4", "model.n_head=4 (checkpoint: 2)"),
    ("model.block_size=256", "model.block_size=256 (checkpoint: 128)"),
    ("model.bias=false", "model.bias=false (checkpoint: true)"),
])
def test_a_conflicting_model_value_names_both_values_and_the_fix(ckpt, override, message):
    p = _params(ckpt, override)
    with pytest.raises(ConfigError) as err:
        hf.check_model_config(p.model)
    text = str(err.value)
    assert message in text and "--set model." in text and "\n" not in text
    with pytest.raises(ConfigError, match="does not fit model"):
        hf.load_pretrained(p.model)


def test_every_conflict_is_listed_at_once(ckpt):
    p = load_params(PARAMS, overrides=[f"model.init_from=hf:{ckpt}",
                                       f"tokenizer.pretrained=hf:{ckpt}"])  # tiny's shape
    with pytest.raises(ConfigError) as err:
        hf.check_model_config(p.model)
    assert "--set model.n_layer=2 --set model.n_head=2 --set model.n_embd=64" in str(err.value)


@pytest.mark.parametrize("field, value", [("activation_function", "relu"),
                                          ("n_inner", 100), ("tie_word_embeddings", False),
                                          ("model_type", "llama")])
def test_a_non_gpt2_architecture_is_refused(ckpt, tmp_path, field, value):
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, field: value}))
    with pytest.raises(ConfigError, match=field if field != "model_type" else "GPT-2-family"):
        hf.load_checkpoint(f"hf:{other}")


# --- specs and where checkpoints come from ----------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["model.init_from=hf:gpt2"], "add --set tokenizer.pretrained=hf:gpt2"),
    (["model.init_from=hf:gpt2", "tokenizer.pretrained=hf:distilgpt2"],
     "differs from model.init_from"),
    (["model.init_from=gpt2"], "invalid parameter 'model.init_from'"),
    (["tokenizer.pretrained=hf:"], "invalid parameter 'tokenizer.pretrained'"),
])
def test_init_from_and_tokenizer_specs_are_checked_with_the_params(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_params(PARAMS, overrides=overrides)


def test_pretrained_tokenizer_alone_is_fine():
    p = load_params(PARAMS, "gpt2-124m", ["tokenizer.pretrained=hf:gpt2"])
    assert p.model.init_from == "" and p.tokenizer.pretrained == "hf:gpt2"


def test_gpt2_continue_profile_needs_and_takes_the_tokenizer_key():
    with pytest.raises(ConfigError, match="tokenizer.pretrained=hf:gpt2"):
        load_params(PARAMS, "gpt2-continue")
    p = load_params(PARAMS, "gpt2-continue", ["tokenizer.pretrained=hf:gpt2"])
    assert p.model.init_from == "hf:gpt2" and p.train.lr == p.train.min_lr == 3e-5


def test_an_uncached_hub_id_offline_is_one_line_naming_it_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        hf.resolve("hf:gpt2")
    text = str(err.value)
    assert "\n" not in text
    for part in ("model.init_from 'hf:gpt2'", "'gpt2' is not in the Hugging Face cache",
                 "HF_HUB_OFFLINE", "hf download gpt2", "huggingface-cli download gpt2",
                 "local save_pretrained folder"):
        assert part in text, part


def test_a_cached_hub_id_resolves_offline_to_the_same_identity(ckpt, tmp_path, monkeypatch):
    """A hub id in the HF cache (as `hf download` leaves it) is read without the network."""
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-gpt2" / "snapshots" / ("a" * 40)
    shutil.copytree(ckpt, snap)
    (cache / "models--someone--tiny-gpt2" / "refs").mkdir()
    (cache / "models--someone--tiny-gpt2" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf.resolve("hf:someone/tiny-gpt2").path == snap.resolve()
    assert hf.checkpoint_digest("hf:someone/tiny-gpt2") == hf.checkpoint_digest(f"hf:{ckpt}")
    x = _ids(1000)
    assert torch.equal(_logits(hf.load_checkpoint("hf:someone/tiny-gpt2"), x),
                       _logits(hf.load_checkpoint(f"hf:{ckpt}"), x))


def test_missing_folder_and_folder_without_weights(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        hf.resolve(f"hf:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        hf.resolve(f"hf:{tmp_path / 'empty'}")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no weights"):
        hf.checkpoint_digest(f"hf:{tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match="no tokenizer"):
        hf.tokenizer_digest(f"hf:{tmp_path / 'empty'}")


def test_preflight_checks_the_checkpoint(ckpt, tmp_path):
    from gpt.preflight import check_pretrained

    check_pretrained(_params(ckpt))
    with pytest.raises(ConfigError, match="does not fit model"):
        check_pretrained(_params(ckpt, "model.n_layer=3"))
    missing = f"hf:{tmp_path / 'gone'}"
    with pytest.raises(ConfigError, match="does not exist"):
        check_pretrained(load_params(PARAMS, overrides=[f"tokenizer.pretrained={missing}"]))


# --- identity -------------------------------------------------------------------------------------


def test_digests_follow_content_not_paths(ckpt, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(ckpt, moved)
    assert hf.checkpoint_digest(f"hf:{moved}") == hf.checkpoint_digest(f"hf:{ckpt}")
    assert hf.tokenizer_digest(f"hf:{moved}") == hf.tokenizer_digest(f"hf:{ckpt}")
    assert len(hf.checkpoint_digest(f"hf:{ckpt}")) == 64
    from safetensors.torch import load_file, save_file

    weights = load_file(str(moved / "model.safetensors"))
    weights["transformer.ln_f.bias"] += 1
    save_file(weights, str(moved / "model.safetensors"), metadata={"format": "pt"})
    assert hf.checkpoint_digest(f"hf:{moved}") != hf.checkpoint_digest(f"hf:{ckpt}")
    assert hf.tokenizer_digest(f"hf:{moved}") == hf.tokenizer_digest(f"hf:{ckpt}")


def test_the_pretrain_key_holds_the_weights_hash(ckpt, tmp_path):
    from gpt.pipeline import keys

    plain = keys.pretrain(load_params(PARAMS, overrides=FITS), "dv")
    assert "init_from" not in plain.reads["model"]  # off: the key it had before the field
    assert "vocab_multiple" not in plain.reads["model"]
    k = keys.pretrain(_params(ckpt), "dv")
    assert k.reads["model"]["init_from"] == hf.checkpoint_digest(f"hf:{ckpt}")
    assert k.digest != plain.digest
    moved = tmp_path / "moved"
    shutil.copytree(ckpt, moved)
    assert keys.pretrain(_params(moved), "dv").digest == k.digest  # moved: same key
    padded = keys.pretrain(_params(ckpt, "model.vocab_multiple=64"), "dv")
    assert padded.digest != k.digest


# --- tokenizer ----------------------------------------------------------------------------------


def test_the_checkpoints_tokenizer_is_used_as_is(ckpt, tmp_path):
    from transformers import AutoTokenizer

    from gpt.data.tokenizer import load_hf_tokenizer, pad_id, save_tokenizer

    ref = AutoTokenizer.from_pretrained(ckpt)
    tok = hf.load_tokenizer(f"hf:{ckpt}")
    text = "Return the value of the named attribute of object.\n\n  x = 1  # done"
    assert tok.encode(text).ids == ref(text)["input_ids"]
    assert tok.get_vocab_size() == len(ref) == 1000
    assert pad_id(tok) == tok.token_to_id(EOT)  # GPT-2 has no <|pad|>: EOT pads
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    exported = load_hf_tokenizer(tmp_path / "tokenizer.json")
    assert len(exported) == 1000  # no token added for padding
    assert exported.pad_token_id == exported.eos_token_id == tok.token_to_id(EOT)


def test_tokens_of_another_tokenizer_are_refused(ckpt, tmp_path):
    p = _params(ckpt)
    with pytest.raises(ConfigError, match="own BPE"):
        hf.check_tokens(p.model, {"vocab_size": 1000}, tmp_path)
    with pytest.raises(ConfigError, match="another tokenizer"):
        hf.check_tokens(p.model, {"vocab_size": 1000, "pretrained_tokenizer": "0" * 64},
                        tmp_path)
    hf.check_tokens(p.model, {"vocab_size": 1000,
                              "pretrained_tokenizer": hf.tokenizer_digest(f"hf:{ckpt}")},
                    tmp_path)


# --- profiles and capacity -----------------------------------------------------------------------


def test_gpt2_124m_profile_builds_124m_parameters_with_gpt2s_vocabulary():
    from gpt.train import build_model

    p = load_params(PARAMS, "gpt2-124m", ["tokenizer.pretrained=hf:gpt2"])
    with torch.device("meta"):
        model = build_model(p.model, 50257)
    total = model.num_params(non_embedding=False)
    assert model.config.vocab_size == 50257
    assert 124.0e6 < total < 124.6e6  # GPT-2 small: 124,439,808 (+36,096 padding rows)


def test_tokens_per_parameter_warning_gives_the_figures():
    from gpt.train import capacity_warning

    assert capacity_warning(412_648, 1_317_000) is None  # the tiny demo: 0.31
    text = capacity_warning(450_000, 124_475_904)
    assert text is not None and "0.00362 tokens per parameter" in text
    assert "124.48M parameters" in text and "450,000 training tokens" in text
