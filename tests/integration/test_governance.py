"""Registry governance on real pipeline output: evaluation artifacts, champion comparison,
explicit promotion and rollback, one-line errors for unknown aliases."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

pytestmark = [pytest.mark.slow]


def test_task_run_has_evaluation_artifacts_and_card(pipeline_run):
    from gpt.registry import client as _client

    _, first, _ = pipeline_run
    uri, task = first["tracking_uri"], first["registered"]["task"]
    client = _client(uri)
    mv = client.get_model_version(task["name"], task["version"])
    files = {a.path for a in client.list_artifacts(mv.run_id, "eval")}
    assert {"eval/confusion_matrix.png", "eval/confusion_matrix.json", "eval/per_class.json",
            "eval/champion_comparison.json", "eval/task_metrics.json"} <= files
    task_eval = first["evaluation"]["task"]
    cm = task_eval["confusion_matrix"]
    assert len(cm) == len(task_eval["labels"])
    assert sum(map(sum, cm)) == task_eval["test_examples"]
    assert "## Versus the champion" in mv.description


def test_compare_promote_rollback_on_real_versions(pipeline_run, tmp_path, monkeypatch,
                                                   capsys):
    from gpt import registry
    from gpt.cli import app, run_app
    from gpt.config import load_params
    from gpt.evaluate import ModelEval
    from gpt.pipeline import steps
    from gpt.pipeline.context import RunContext
    from tests.conftest import RUN_OVERRIDES

    ws, first, _ = pipeline_run
    params = load_params(ws / "params.yaml", overrides=RUN_OVERRIDES)
    uri = registry.default_tracking_uri(tmp_path)
    tracking = registry.Tracking(uri, "governance")
    evaluation = {k: ModelEval(**v) for k, v in first["evaluation"].items()}
    ctx = RunContext.of(ws, params, data_version=first["data_version"], tracking=tracking)
    one = steps.register_step(ctx, evaluation)
    # The same weights are one version: a second registration reuses it ...
    assert all(r.reused for r in steps.register_step(ctx, evaluation).values())
    # ... unless forced, and then equal metrics do not beat the champion.
    monkeypatch.setattr("gpt.registry.registration._versions_with_key",
                        lambda *a: (None, None))  # no version with these weights, gated or not
    two = steps.register_step(ctx, evaluation)
    name = two["task"].name
    assert one["task"].champion and not two["task"].champion

    client = registry.client(uri)
    mv2 = client.get_model_version(name, "2")
    assert "champion v1" in mv2.description and "| macro_f1 |" in mv2.description
    path = mlflow.artifacts.download_artifacts(run_id=mv2.run_id, tracking_uri=uri,
                                               artifact_path="eval/champion_comparison.json",
                                               dst_path=str(tmp_path / "dl"))
    comparison = json.loads(Path(path).read_text())
    assert comparison["comparable"] and comparison["champion_version"] == "1"
    assert all(r["delta"] == 0 for r in comparison["rows"])

    def aliases() -> dict[str, str]:
        return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}

    assert aliases() == {"champion": "1", "challenger": "2"}
    assert registry.promote(uri, name, "2", "prefer newer code")["previous"] == "1"
    # the promoted version is the champion only, not champion and challenger at once
    assert aliases() == {"champion": "2"}
    assert registry.rollback(uri, name, "regression in review")["version"] == "1"
    actions = [(h["version"], h["action"]) for h in registry.champion_history(uri, name)]
    assert actions == [("1", "gate"), ("2", "promote"), ("1", "rollback")]

    monkeypatch.setattr("sys.argv", ["gptops", "generate", "hi", "--workdir", str(ws),
                                     "--alias", "nope", "--tracking-uri", uri])
    with pytest.raises(SystemExit) as exc:
        run_app(app)
    assert exc.value.code == 2
    out = capsys.readouterr().out
    assert "has no alias 'nope'" in out and "champion=v1" in out
