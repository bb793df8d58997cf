"""The registry's tag schema (gpt.registry.tags): what a version's tags say, written and read
back, for versions registered before the schema had a class too."""

import pytest

from gpt.registry.tags import VALUE_CAP, VersionTags

#: The tags of a classifier version as gptops wrote them before VersionTags existed.
WRITTEN = {
    "data_version": "3f2a9c1e", "git_commit": "dd00b25aa", "prefect_flow_run_id": "none",
    "profile": "tiny", "init_from": "scratch", "gptops.workspace": "host:ab12",
    "parent_model_version": "gptops-base/1", "model_key": "k1", "eval_key": "e1",
    "eval_hash": "task-9c", "primary_metric": "macro_f1", "metric.macro_f1": "0.412346",
    "metric.accuracy": "0.5", "metric.baseline_accuracy": "0.25",
    "promotion_decision": "first version: no champion yet"}


def test_a_versions_tags_read_back_into_fields_and_write_out_unchanged():
    t = VersionTags.from_tags(WRITTEN)
    assert (t.model_key, t.eval_key, t.eval_hash, t.primary_metric) == (
        "k1", "e1", "task-9c", "macro_f1")
    assert t.metrics == {"macro_f1": 0.412346, "accuracy": 0.5, "baseline_accuracy": 0.25}
    assert (t.parent, t.data_version, t.git_commit) == ("gptops-base/1", "3f2a9c1e", "dd00b25aa")
    assert t.lineage["gptops.workspace"] == "host:ab12" and "model_key" not in t.lineage
    assert t.decision.startswith("first version") and t.rejected is None
    assert t.to_tags() == WRITTEN


def test_registering_writes_what_the_registry_wrote_before():
    """The dict registration built by hand before the schema: lineage, keys, eval hash, the
    gate's metric and every metric at 6 significant digits, no None values."""
    lineage = {"data_version": "d", "parent_model_version": "b/1", "flow": None}
    metrics = {"val_ppl": 455.321987, "bench.x.acc": 0.25}
    before = {**lineage, "model_key": "k", "eval_key": "e", "eval_hash": "h",
              "primary_metric": "val_ppl",
              **{f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()}}
    written = VersionTags("k", "e", "h", "val_ppl", metrics, lineage=lineage).to_tags()
    assert written == {k: str(v) for k, v in before.items() if v is not None}
    assert written["metric.val_ppl"] == "455.322"


def test_an_older_or_hand_edited_version_reads_with_what_it_has():
    t = VersionTags.from_tags({"metric.val_ppl": "n/a", "metric.val_loss": "2.5",
                               "rejected": ""})
    assert (t.model_key, t.eval_hash, t.primary_metric, t.decision) == ("", None, "", None)
    assert t.metrics == {"val_loss": 2.5}  # a metric that is not a number is left out
    assert t.rejected == ""  # present, even empty: the gate refused it


@pytest.mark.parametrize("field", ["decision", "rejected"])
def test_a_long_verdict_is_cut_to_the_cap(field):
    tags = VersionTags(**{field: "x" * (VALUE_CAP + 10)}).to_tags()
    assert max(len(v) for v in tags.values()) == VALUE_CAP
