"""The registered model's page in the MLflow UI says what the model is, how to load it, and
shows the champion history as a table (every move: gate, promote, rollback)."""

from __future__ import annotations


def test_the_model_description_follows_every_champion_move(tmp_path):
    from gpt import registry
    from gpt.registry import gate
    from gpt.registry.governance import TASK_TAG

    uri = registry.default_tracking_uri(tmp_path)
    client = registry.client(uri)
    client.create_registered_model("m", tags={TASK_TAG: "text-generation"})
    spec = gate.GateSpec("val_ppl", higher_is_better=False, baseline=100.0)
    for value in (50.0, 40.0):  # v1 the first champion, v2 beats it
        v = client.create_model_version("m", f"file:///nowhere/{value}", tags={
            "metric.val_ppl": str(value), "eval_hash": "e1"}).version  # as registration tags it
        gate.apply(client, "m", str(v), spec, {"val_ppl": value}, "e1")
    registry.rollback(uri, "m", "v2 regressed in review")
    page = client.get_registered_model("m").description
    assert "a GPT language model (text generation)" in page
    assert 'mlflow.pyfunc.load_model("models:/m@champion")' in page
    assert "| at | action | champion | previous | reason |" in page
    rows = [line for line in page.splitlines() if line.startswith("| 20")]
    assert [r.split(" | ")[1:4] for r in rows] == [["rollback", "v1", "v2"],
                                                    ["gate", "v2", "v1"], ["gate", "v1", ""]]
    assert "v2 regressed in review" in rows[0]
