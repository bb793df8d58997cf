"""The run summary shows the SFT metrics of the model's task type, each next to the base
model's (a qa model has no ROUGE, a translation model leads with chrF)."""

import pytest

from flows.report import summary_rows
from gpt.kinds import SFT_TASK_METRICS

TASK = {"metrics": {"accuracy": 0.7, "baseline_accuracy": 0.2, "macro_f1": 0.6,
                    "baseline_macro_f1": 0.1}}


@pytest.mark.parametrize("task_type, label, value", [
    ("summarise", "sft: rouge_l / token_f1 (base model)", "0.500 / 0.500 (0.100 / 0.100)"),
    ("qa", "sft: token_f1 (base model)", "0.500 (0.100)"),
    ("translate", "sft: chrf / bleu / token_f1 (base model)",
     "0.500 / 0.500 / 0.500 (0.100 / 0.100 / 0.100)"),
])
def test_the_sft_row_follows_the_metrics_of_its_task_type(task_type, label, value):
    names = SFT_TASK_METRICS[task_type]
    sft = {**dict.fromkeys(names, 0.5), **{f"baseline_{m}": 0.1 for m in names}}
    rows = dict(summary_rows({"data_version": "v", "stages": [], "registered": {},
                              "seconds": 1.0,
                              "evaluation": {"task": TASK, "sft": {"metrics": sft}}}))
    assert rows[label] == value


def test_an_evaluation_table_has_value_baseline_and_champion_per_metric():
    from flows.report import evaluation_rows

    e = {"metrics": {"accuracy": 0.81234567, "baseline_accuracy": 0.5, "macro_f1": 0.7,
                     "baseline_macro_f1": 0.3, "precision_billing": 0.9}}
    rows = evaluation_rows(e, {"champion_metrics": {"accuracy": 0.8}})
    assert rows == [{"metric": "accuracy", "value": 0.8123, "baseline": 0.5, "champion": 0.8},
                    {"metric": "macro_f1", "value": 0.7, "baseline": 0.3, "champion": None}]
