"""A mistyped `--set` key is refused with the close key it probably meant."""

from __future__ import annotations

import pytest

from gpt.config import PROJECT_PARAMS, load_params
from gpt.errors import ConfigError


@pytest.mark.parametrize("override, meant", [
    ("train.maxsteps=5", "train.max_steps"),
    ("trian.max_steps=5", "train"),
    ("finetune.lora_rnak=4", "finetune.lora_rank"),
])
def test_a_typo_names_the_close_key(override: str, meant: str) -> None:
    with pytest.raises(ConfigError, match=rf"did you mean '{meant}'\?"):
        load_params(PROJECT_PARAMS, "tiny", [override])


def test_no_suggestion_when_nothing_is_close() -> None:
    with pytest.raises(ConfigError) as err:
        load_params(PROJECT_PARAMS, "tiny", ["train.zzzzzz=1"])
    assert "did you mean" not in str(err.value)
