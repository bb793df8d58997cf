"""The promotion gate as pure functions: the rule, its rounding, comparisons, finiteness."""

import math

import pytest

from gpt.errors import RegistryError
from gpt.registry.gate import (
    Champion,
    GateSpec,
    compare,
    comparison_markdown,
    decide,
    require_finite,
)


def champ(value: float | None, eval_hash: str = "h1", metric: str = "m") -> Champion | None:
    return None if value is None else Champion("3", eval_hash, {metric: value})


@pytest.mark.parametrize("new, old, same, higher, promote", [
    (0.8, None, True, True, True),          # first version
    (0.8, 0.7, True, True, True),           # better
    (0.7, 0.8, True, True, False),          # worse
    (0.8, 0.7, False, True, False),         # different eval set: not comparable
    (10.0, 12.0, True, False, True),        # lower perplexity is better
    (math.nan, 0.7, True, True, False),     # NaN never promotes
])
def test_rule(new, old, same, higher, promote):
    d = decide(GateSpec("m", higher, None), new, "h1", champ(old, "h1" if same else "h2"))
    assert d.promote is promote and d.reason


def test_a_version_that_does_not_beat_the_trivial_baseline_is_refused():
    d = decide(GateSpec("macro_f1", True, 0.04), 0.03, "h", None)
    assert not d.promote and d.rejected and "baseline" in d.reason
    assert not decide(GateSpec("m", True, None), 0.7, "h", champ(0.8)).rejected  # challenger
    assert decide(GateSpec("macro_f1", True, 0.04), 0.30, "h", None).promote
    assert not decide(GateSpec("val_ppl", False, 4096.0), 5000.0, "h", None).promote


def test_margin():
    spec = GateSpec("f1", True, None, min_improvement=0.01)
    assert not decide(spec, 0.705, "h", champ(0.70, "h", "f1")).promote
    assert decide(spec, 0.72, "h", champ(0.70, "h", "f1")).promote


def test_the_same_metric_re_registered_does_not_beat_its_stored_self():
    """The champion's value comes back from a 6-digit tag; the new one is compared at that."""
    value = 0.123456789
    stored = Champion("1", "h", {"m": float(f"{value:.6g}")})
    assert not decide(GateSpec("m", True, None), value, "h", stored).promote
    assert decide(GateSpec("m", True, None), value + 1e-5, "h", stored).promote


def test_compare_same_eval_hash_puts_metrics_side_by_side():
    c = compare({"macro_f1": 0.55, "accuracy": 0.6, "new_metric": 1.0}, "h1",
                Champion("3", "h1", {"macro_f1": 0.5, "accuracy": 0.6}))
    assert c["comparable"] and c["champion_version"] == "3"
    rows = {r["metric"]: r for r in c["rows"]}
    assert math.isclose(rows["macro_f1"]["delta"], 0.05)
    assert rows["new_metric"]["champion"] is None and rows["new_metric"]["delta"] is None
    md = comparison_markdown(c)
    assert "| macro_f1 | 0.55 | 0.5 | +0.05 |" in md and "champion v3" in md
    assert "| new_metric | 1 | – | – |" in md


def test_compare_different_eval_hash_is_not_comparable():
    c = compare({"macro_f1": 0.9}, "h2", Champion("3", "h1", {"macro_f1": 0.5}))
    assert not c["comparable"] and c["rows"] == []
    assert c["note"].startswith("not comparable")
    assert "not comparable" in comparison_markdown(c) and "|" not in comparison_markdown(c)


def test_compare_without_champion():
    c = compare({"macro_f1": 0.9}, "h2", None)
    assert not c["comparable"] and c["champion_version"] is None and "no champion" in c["note"]


def test_non_finite_metrics_are_refused():
    with pytest.raises(RegistryError, match="non-finite"):
        require_finite({"accuracy": float("nan")}, "task")
    require_finite({"accuracy": 0.5}, "task")


def test_a_classifier_must_beat_its_baseline_on_every_metric_its_gate_lists():
    """The case seen in the wild: macro-F1 0.048 beat 0.038, accuracy 0.109 lost to 0.178."""
    from gpt.registry.gate import Bar

    spec = GateSpec("macro_f1", True, 0.038, also=(Bar("accuracy", True, 0.178),))
    metrics = {"macro_f1": 0.048, "accuracy": 0.109}
    d = decide(spec, metrics["macro_f1"], "h", None, metrics)
    assert d.rejected and not d.promote and "accuracy 0.109" in d.reason
    assert decide(spec, 0.048, "h", None, {**metrics, "accuracy": 0.2}).promote
    # a listed metric that is missing or NaN never passes
    assert decide(spec, 0.048, "h", None, {"macro_f1": 0.048}).rejected
    assert decide(spec, 0.048, "h", None, {**metrics, "accuracy": math.nan}).rejected


def _eval(kind, metrics, better=None):
    from gpt.evaluate import ModelEval

    return ModelEval(kind, metrics, "h", "k", higher_is_better=better or {})


def test_the_gate_reads_any_metric_params_yaml_lists_with_lm_evals_direction():
    from gpt.config import load_params
    from gpt.pipeline.candidates import gate_spec

    p = load_params("params.yaml", "tiny", [
        "registry.gate.base=[bench.gptops_cloze.perplexity, bench.gptops_choice.acc_norm]",
        "registry.gate.sft=[bench.gptops_choice.acc, rouge_l]"])
    e = _eval("base", {"val_ppl": 30.0, "bench.gptops_cloze.perplexity": 900.0,
                       "bench.gptops_choice.acc_norm": 0.3,
                       "baseline_bench.gptops_choice.acc_norm": 0.25},
              {"bench.gptops_cloze.perplexity": False, "bench.gptops_choice.acc_norm": True})
    spec = gate_spec("base", p, e)
    assert (spec.metric, spec.higher_is_better, spec.baseline) == \
        ("bench.gptops_cloze.perplexity", False, None)
    assert [(b.metric, b.higher_is_better, b.baseline) for b in spec.also] == \
        [("bench.gptops_choice.acc_norm", True, 0.25)]
    # lower perplexity beats the champion; choice accuracy at chance is rejected
    champion = Champion("1", "h", {"bench.gptops_cloze.perplexity": 1000.0})
    assert decide(spec, 900.0, "h", champion, e.metrics).promote
    assert decide(spec, 900.0, "h", champion,
                  {**e.metrics, "bench.gptops_choice.acc_norm": 0.25}).rejected
    sft = gate_spec("sft", p, _eval("sft", {"bench.gptops_choice.acc": 0.5, "rouge_l": 0.4,
                                            "baseline_rouge_l": 0.1}))
    assert sft.metric == "bench.gptops_choice.acc" and sft.also[0].baseline == 0.1
    # the defaults: the classifier's gate lists macro-F1 then accuracy, each against its baseline
    task = gate_spec("task", load_params("params.yaml"), _eval("task", {
        "macro_f1": 0.5, "accuracy": 0.6, "baseline_macro_f1": 0.1, "baseline_accuracy": 0.3}))
    assert (task.metric, task.baseline) == ("macro_f1", 0.1)
    assert [(b.metric, b.baseline) for b in task.also] == [("accuracy", 0.3)]


@pytest.mark.parametrize("task_type, primary", [
    ("summarise", "rouge_l"), ("qa", "token_f1"), ("translate", "chrf"), ("generic", "rouge_l")])
def test_the_sft_gate_follows_the_task_type_unless_params_list_metrics(task_type, primary):
    from gpt.config import load_params
    from gpt.errors import ConfigError
    from gpt.pipeline.candidates import gate_spec
    from gpt.preflight import check_benchmarks

    p = load_params("params.yaml", "tiny", [f"sft.task_type={task_type}"])
    assert p.registry.gate.sft == []  # the project default: the type's standard metric
    spec = gate_spec("sft", p, _eval("sft", {primary: 0.6, f"baseline_{primary}": 0.2}))
    assert (spec.metric, spec.higher_is_better, spec.baseline, spec.also) == \
        (primary, True, 0.2, ())
    check_benchmarks(p)
    listed = load_params("params.yaml", "tiny", [f"sft.task_type={task_type}",
                                                 "registry.gate.sft=[exact_match]"])
    assert gate_spec("sft", listed, _eval("sft", {"exact_match": 0.5})).metric == "exact_match"
    if task_type == "qa":  # a metric the type does not produce: one line before any work
        with pytest.raises(ConfigError, match=r"sft.task_type=qa.*use one of token_f1, "):
            check_benchmarks(load_params("params.yaml", "tiny", [
                "sft.task_type=qa", "registry.gate.sft=[rouge_l]"]))
