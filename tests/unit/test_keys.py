"""Step keys hash exactly what each step reads (DVC's rule, applied to training)."""

import pytest

from gpt.config import load_params
from gpt.pipeline import keys
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"
DV = "data-v1"


def all_keys(overrides: list[str], data_version: str = DV) -> dict[str, str]:
    p = load_params(PARAMS, overrides=overrides)
    out = {"pretrain": keys.pretrain(p, data_version).digest,
           "finetune": keys.finetune(p, data_version).digest,
           "sft": keys.sft(p, data_version).digest}
    out.update({f"eval-{k}": keys.evaluation(k, p, data_version).digest
                for k in ("base", "task", "sft")})
    return out


BASE = all_keys([])


@pytest.mark.parametrize("override, changed", [
    ("finetune.lr=0.002", {"finetune", "eval-task"}),
    ("finetune.lora_rank=4", {"finetune", "eval-task"}),
    ("sft.lr=0.002", {"sft", "eval-sft"}),
    ("sft.eval_examples=7", {"eval-sft"}),
    ("sft.max_new_tokens=7", {"eval-sft"}),
    ("sft.enabled=false", set()),
    ("evaluate.ppl_batches=3", {"eval-base"}),
    ("registry.tracking_uri=sqlite:////tmp/x.db", set()),
    ("registry.task_model=other", set()),
    ("train.lr=0.001", set(BASE)),  # everything builds on the base
    # How training is spread over processes changes no result (the global batch is the same).
    ("train.nproc_per_node=4", set()),
    ("train.strategy=fsdp", set()),
    ("model.n_layer=2", set(BASE)),
])
def test_a_change_rekeys_exactly_the_steps_that_read_it(override, changed):
    new = all_keys([override])
    assert {k for k in BASE if new[k] != BASE[k]} == changed


def test_a_new_data_version_rekeys_everything():
    new = all_keys([], "data-v2")
    assert all(new[k] != BASE[k] for k in BASE)


def test_task_files_are_keyed_by_content_not_path(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("text,label\nhello,x\n")
    b.write_text("text,label\nhello,x\n")
    sets = ["finetune.task=file"]
    at_a = all_keys([*sets, f"finetune.task_path={a}"])["finetune"]
    assert all_keys([*sets, f"finetune.task_path={b}"])["finetune"] == at_a  # moved: same
    b.write_text("text,label\nhello,y\n")
    assert all_keys([*sets, f"finetune.task_path={b}"])["finetune"] != at_a  # edited: new


def test_a_key_records_what_it_was_made_of():
    p = load_params(PARAMS, overrides=["finetune.lr=0.002"])
    k = keys.finetune(p, DV)
    assert k.reads["pretrain"] == keys.pretrain(p, DV).digest
    assert k.reads["finetune"]["lr"] == 0.002
    assert len(k.short) == 8 and k.digest.startswith(k.short)


def test_a_registered_base_rekeys_the_tuned_models_only():
    p = load_params(PARAMS)
    assert keys.finetune(p, DV, base="abc").digest != keys.finetune(p, DV).digest
    assert keys.sft(p, DV, base="abc").digest != keys.sft(p, DV).digest
    assert keys.finetune(p, DV, base="abc").reads["pretrain"] == "abc"
    assert keys.model("base", p, DV, base="abc") == keys.pretrain(p, DV)


@pytest.mark.parametrize("spec, ok", [
    ("", True), ("models:/gptops-base@champion", True), ("models:/gptops-base/3", True),
    ("gptops-base", False), ("models:/gptops-base", False), ("hf:./gpt2", False),
])
def test_base_specs(spec, ok):
    from gpt.errors import ConfigError
    from gpt.pipeline.base import parse

    if ok:
        parse(spec)
    else:
        with pytest.raises(ConfigError, match="bad --base"):
            parse(spec)


def test_a_resolved_base_pins_its_version():
    from gpt.pipeline.base import Base

    assert Base("models:/m@champion", "d", "m", "3").pinned == "models:/m/3"
    assert Base("", "d").pinned == ""
