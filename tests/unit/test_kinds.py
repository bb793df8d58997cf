"""One record per model kind (gpt.kinds): the names line up with the params, the keys, the
evaluations, the registry candidates and the training loop's messages."""

import pytest
import torch

from gpt import kinds
from gpt.config import get_dotted, load_params
from gpt.pipeline import candidates, keys, steps
from gpt.train import LoopSettings, _lower_lr, _oom_message
from tests.conftest import PROJECT_ROOT

PARAMS = load_params(PROJECT_ROOT / "params.yaml")


def test_each_name_of_a_kind_is_its_own():
    for field in ("name", "step", "section", "registry_key", "metric_prefix"):
        values = [getattr(k, field) for k in kinds.KINDS]
        assert len(set(values)) == len(values), field
    for k in kinds.KINDS:
        assert kinds.named(k.name) is k and kinds.of_step(k.step) is k
    with pytest.raises(KeyError, match="unknown model kind 'bse'"):
        kinds.named("bse")
    with pytest.raises(KeyError, match="no model kind is made by a step 'train'"):
        kinds.of_step("train")


@pytest.mark.parametrize("kind", kinds.KINDS, ids=lambda k: k.name)
def test_a_kind_names_keys_the_params_have(kind):
    """Its batch size, learning rate, registered name and gate are keys of params.yaml."""
    assert get_dotted(PARAMS, kind.batch_key) > 0
    assert get_dotted(PARAMS, kind.lr_key) > 0
    assert get_dotted(PARAMS, f"registry.{kind.registry_key}")
    assert isinstance(get_dotted(PARAMS, kind.gate_key), list)
    assert set(kind.standard_gate) <= set(kind.metrics)
    assert candidates.gate_metrics(kind.name, PARAMS)[0] in kind.metrics


def test_every_kind_is_evaluated_registered_and_keyed_by_its_step():
    names = {k.name for k in kinds.KINDS}
    assert set(steps.EVALUATORS) == names and set(candidates.BUILDERS) == names
    for k in kinds.KINDS:
        assert keys.model(k.name, PARAMS, "dv").step == k.step
        assert keys.evaluation(k.name, PARAMS, "dv").step == f"evaluate-{k.name}"
    # Before the records, an unknown kind silently got the SFT model's keys.
    for key in (keys.model, keys.evaluation):
        with pytest.raises(KeyError, match="unknown model kind"):
            key("bse", PARAMS, "dv")


def test_a_run_makes_the_base_first_and_sft_only_when_enabled():
    off = load_params(PROJECT_ROOT / "params.yaml", overrides=["sft.enabled=false"])
    assert steps.model_kinds(PARAMS) == ("base", "task", "sft")
    assert steps.model_kinds(PARAMS, "models:/b@champion") == ("task", "sft")
    assert steps.model_kinds(off) == ("base", "task")
    assert steps.model_kinds(off, "models:/b/1") == ("task",)


@pytest.mark.parametrize("label, batch, lr", [
    ("pretrain", "train.batch_size", "train.lr"),
    ("finetune", "finetune.batch_size", "finetune.lr"),
    ("sft", "sft.batch_size", "sft.lr"),
    ("something else", "train.batch_size", "train.lr"),
])
def test_the_loops_fixes_name_the_steps_own_keys(label, batch, lr):
    assert f"lower {batch} or model.block_size" in _oom_message(label, 3, torch.device("cpu"))
    settings = LoopSettings(kind=label, max_steps=1, lr=0.5, min_lr=0.0, warmup_steps=0,
                            grad_accum=1, grad_clip=0.0, max_nonfinite_steps=1)
    assert _lower_lr(settings) == f"lower {lr} (now 0.5), e.g. to 0.05"
