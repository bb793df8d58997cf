"""The registration path with PostgreSQL as MLflow's backend store (127.0.0.1:5432)."""

from dataclasses import asdict

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_register_on_postgres(pipeline_run, postgres_uri, tmp_path, monkeypatch):
    from gpt.config import load_params
    from gpt.evaluate import ModelEval
    from gpt.pipeline import steps
    from gpt.pipeline.context import RunContext
    from gpt.registry import Tracking, list_versions, load_champion_components
    from tests.conftest import RUN_OVERRIDES

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to cwd
    ws, first, _ = pipeline_run
    params = load_params(ws / "params.yaml", overrides=RUN_OVERRIDES)
    evaluation = {k: ModelEval(**v) for k, v in first["evaluation"].items()}
    tracking = Tracking(postgres_uri, "pg", tags={"prefect_flow_run_id": "pg-test",
                                                  "data_version": first["data_version"]})
    ctx = RunContext.of(ws, params, data_version=first["data_version"], tracking=tracking)
    reg = {k: asdict(r) for k, r in steps.register_step(ctx, evaluation).items()}
    assert reg["base"]["champion"] and reg["task"]["champion"]
    versions = list_versions(postgres_uri)
    assert {(v["name"], v["version"]) for v in versions} == {
        ("gptops-base", "1"), ("gptops-package-clf", "1"), ("gptops-sft", "1")}
    for v in versions:
        gate = reg[{"gptops-base": "base", "gptops-package-clf": "task",
                    "gptops-sft": "sft"}[v["name"]]]
        # no alias and a "rejected" tag when it does not beat its trivial baseline
        expected = (["champion"] if gate["champion"] else [] if gate["rejected"]
                    else ["challenger"])
        assert v["aliases"] == expected
        assert ("rejected" in v["tags"]) is gate["rejected"]
    assert all(v["tags"]["data_version"] == first["data_version"] for v in versions)
    comps = load_champion_components(postgres_uri, "gptops-base")
    assert comps["model"].config.n_layer == params.model.n_layer
