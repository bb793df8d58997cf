"""The `tune:` section: a bad search space is one clear error before any trial."""

from __future__ import annotations

import pytest

from gpt.config import PROJECT_PARAMS, load_params
from gpt.errors import ConfigError


def _load(*overrides: str):
    return load_params(PROJECT_PARAMS, "tiny", list(overrides))


def test_the_project_space_loads_and_a_trial_gets_its_values():
    from gpt.tune import trial_params

    p = _load()
    assert p.tune is not None and p.tune.objective in ("val_loss", "val_ppl")
    t = trial_params(p, {"train.lr": 1e-4, "model.n_layer": 2})
    assert (t.train.lr, t.model.n_layer, t.train.max_steps) == (1e-4, 2, p.tune.steps_per_trial)
    assert t.tune == p.tune and t.train.batch_size == p.train.batch_size


@pytest.mark.parametrize("space, message", [
    ("{train.lrr: [0.1]}", "tune.space key 'train.lrr': unknown parameter (did you mean "
                           "'train.lr'?)"),
    ("{finetune.lr: [0.1]}", "only model.* and train.* keys can be searched"),
    ("{train.max_steps: [10, 20]}", "each trial's steps are tune.steps_per_trial"),
    ("{model.n_layer: [0, 2]}", "tune.space key 'model.n_layer': the value 0 is invalid there"),
    ("{train.lr: {low: 0.1, high: 0.01}}", "need low < high"),
    ("{train.lr: {low: 0, high: 0.01, log: true}}", "low > 0 with log: true"),
])
def test_a_bad_space_is_one_line_naming_the_key(space, message):
    with pytest.raises(ConfigError) as err:
        _load(f"tune.space={space}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_objective_that_is_not_a_base_metric_is_refused():
    with pytest.raises(ConfigError, match="objective 'accuracy' is not a metric of the base "
                                          "model's evaluation"):
        _load("tune.objective=accuracy")


def test_a_suggested_int_range_gives_ints():
    import optuna

    from gpt.tune import suggest

    p = _load("tune.space={model.n_layer: {low: 1, high: 3}, train.lr: {low: 0.001, high: 0.01}}")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = suggest(study.ask(), p)
    assert isinstance(values["model.n_layer"], int) and 1 <= values["model.n_layer"] <= 3
    assert isinstance(values["train.lr"], float)


def test_the_study_name_follows_the_search_but_not_the_budget():
    from gpt.tune import study_name

    base = study_name(_load(), "v1")
    assert base.startswith("tune-")
    assert study_name(_load("tune.trials=50"), "v1") == base  # a larger budget: same study
    assert study_name(_load("tune.seed=1"), "v1") != base
    assert study_name(_load("train.eval_interval=7"), "v1") != base
    assert study_name(_load(), "v2") != base
