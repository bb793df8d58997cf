"""params.yaml → validated Params: profiles, overrides and clear errors."""

import pytest

from gpt.config import load_params, resolve_params
from gpt.errors import ConfigError
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"


def test_defaults_and_profiles_load():
    tiny = load_params(PARAMS)
    big = load_params(PARAMS, "gpt2-124m")
    assert (big.model.n_layer, big.model.n_head, big.model.n_embd, big.model.block_size) == \
        (12, 12, 768, 1024)
    assert tiny.model.n_layer < big.model.n_layer
    assert tiny.data == big.data  # profiles never touch the data stages


def test_override_is_typed():
    p = load_params(PARAMS, overrides=["train.max_steps=7", "train.lr=1e-4"])
    assert p.train.max_steps == 7 and p.train.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"profile": "huge"}, "unknown profile 'huge'"),
    ({"overrides": ["train.nope=1"]}, "unknown parameter 'train.nope'"),
    ({"overrides": ["nosuch.key=1"]}, "unknown parameter 'nosuch.key'"),
    ({"overrides": ["train.max_steps=-3"]}, "invalid parameter 'train.max_steps'"),
    ({"overrides": ["model.n_head=3"]}, "not divisible"),
    ({"overrides": ["train.lr"]}, "bad override 'train.lr'"),
])
def test_bad_params_name_the_input(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_params(PARAMS, **kwargs)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_profile_may_not_change_data_sections():
    raw = {"profiles": {"x": {"clean": {"min_chars": 1}}}}
    with pytest.raises(ConfigError, match="may not change section 'clean'"):
        resolve_params(raw, "x")


def test_no_run_value_is_defaulted_in_code():
    """params.yaml is the one source of run values: no field of a section restates one (a
    workspace's older params.yaml gets the keys it lacks from the project's params.yaml)."""
    from pydantic import BaseModel

    from gpt.config import Params, TuneRange

    defaulted = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if not field.is_required() and model is not TuneRange:  # ``log`` is range syntax
                defaulted.append(prefix + name)
            for kind in getattr(field.annotation, "__args__", None) or (field.annotation,):
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    walk(kind, f"{prefix}{name}.")

    walk(Params, "")
    assert defaulted == []


def test_every_training_section_has_the_same_schedule_shape():
    p = load_params(PARAMS, overrides=["train.lr=0.002", "finetune.max_steps=90"])
    for section in (p.train, p.finetune, p.sft):
        assert section.min_lr == section.lr * section.min_lr_factor  # follows an lr override
        assert section.checkpoint_interval == section.max_steps // section.checkpoints
    assert (p.train.min_lr, p.finetune.checkpoint_interval) == (0.002 * 0.1, 45)
