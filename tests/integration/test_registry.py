"""The registry on a real MLflow SQLite store: registering, reuse by key, NaN refusal, promote,
rollback, history."""

from __future__ import annotations

import json

import pytest

from gpt import registry
from gpt.errors import RegistryError

TEXTS = ["def add(a, b): return a + b", "Return a new list of items.", "The module provides"] * 40


def tiny_hf(tmp_path):
    """A 1-layer ``GPT2LMHeadModel`` and a matching fast tokenizer, built locally."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt.data.tokenizer import load_hf_tokenizer, save_tokenizer, train_tokenizer

    path = tmp_path / "tokenizer.json"
    save_tokenizer(train_tokenizer(TEXTS, 300), path)
    tok = load_hf_tokenizer(path)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300,
                                       n_positions=32))
    return model, tok


def candidate(name: str, model, tok, value: float, eval_hash: str = "e1",
              key: str = "") -> registry.Candidate:
    """A text-generation candidate judged on ``val_ppl`` (lower is better), no baseline."""
    return registry.Candidate(
        kind="base", name=name, task="text-generation", metrics={"val_ppl": value},
        eval_hash=eval_hash, spec=registry.GateSpec("val_ppl", False, None),
        keys={"model_key": key or f"m-{value}", "eval_key": key or f"e-{value}"},
        tags={"data_version": "d"}, export=lambda: (model, tok), card=f"# {name}\n")


def register(uri: str, name: str, model, tok, value: float, eval_hash: str = "e1",
             key: str = "") -> registry.Registration:
    return registry.register(candidate(name, model, tok, value, eval_hash, key),
                             registry.Tracking(uri, "test"))


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One store per module (creating MLflow's tables takes seconds); each test its own model."""
    return registry.default_tracking_uri(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture()
def m(request):
    return "m-" + "".join(c for c in request.node.name if c.isalnum())[-40:]


def _fake_versions(uri: str, name: str, n: int) -> None:
    """``n`` versions without logged artifacts (governance needs only versions and tags)."""
    client = registry.client(uri)
    client.create_registered_model(name)
    for i in range(n):
        client.create_model_version(name, f"file:///nowhere/{i}", tags={"eval_hash": "e1"})


def test_nan_metric_registers_nothing_and_real_version_loads(tmp_path, uri, m):
    model, tok = tiny_hf(tmp_path)
    first = register(uri, m, model, tok, 10 / 3)
    assert first.champion and first.version == "1"
    with pytest.raises(RegistryError, match="non-finite"):
        register(uri, m, model, tok, float("nan"))
    assert [v["version"] for v in registry.list_versions(uri, m)] == ["1"]
    assert registry.read_champion(registry.client(uri), m) == registry.gate.Champion(
        "1", "e1", {"val_ppl": 3.33333})
    # Identical metrics (from other steps: other keys) do not "beat" the champion through the
    # tag's rounding.
    second = register(uri, m, model, tok, 10 / 3, key="retrained")
    assert not second.champion and second.previous_champion == "1"
    with pytest.raises(RegistryError,
                       match="has no alias 'nope'.*its aliases: challenger=v2, champion=v1"):
        registry.load_champion_components(uri, m, "nope")
    with pytest.raises(RegistryError, match=f"no registered model 'zz'.*registered models: .*{m}"):
        registry.load_champion_components(uri, "zz")


def test_promote_rollback_and_history(uri, m):
    _fake_versions(uri, m, 3)
    client = registry.client(uri)
    registry.set_champion(client, m, "1", "first version", action="gate")
    registry.set_champion(client, m, "2", "beats v1", action="gate")

    out = registry.promote(uri, m, "3", "hand-checked samples")
    assert out == {"name": m, "version": "3", "previous": "2", "action": "promote",
                   "reason": "hand-checked samples"}
    assert registry.rollback(uri, m, "v3 hallucinates")["version"] == "2"
    assert registry.rollback(uri, m, "v2 too")["version"] == "1"  # walks back, not to v3
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback(uri, m, "again")
    assert str(client.get_model_version_by_alias(m, "champion").version) == "1"

    history = registry.champion_history(uri, m)
    assert [(h["version"], h["action"], h["previous"]) for h in history] == [
        ("1", "gate", None), ("2", "gate", "1"), ("3", "promote", "2"),
        ("2", "rollback", "3"), ("1", "rollback", "2")]
    assert history[3]["reason"] == "v3 hallucinates"
    assert json.loads(client.get_registered_model(m).tags[registry.HISTORY_TAG]) == history
    assert "rolled back" in client.get_model_version(m, "1").tags["promotion_decision"]


def test_a_version_is_reused_only_when_its_model_key_matches(tmp_path, uri, m):
    model, tok = tiny_hf(tmp_path)
    first = register(uri, m, model, tok, 5.0, key="k1")
    again = register(uri, m, model, tok, 5.0, key="k1")
    assert again.reused and again.version == first.version and again.champion
    c = candidate(m, model, tok, 5.0, key="k1")
    c.keys["eval_key"] = "re-evaluated"  # same weights, evaluated otherwise: still that version
    assert registry.register(c, registry.Tracking(uri, "test")).reused
    other = register(uri, m, model, tok, 5.0, key="k2")
    assert not other.reused and other.version == "2"
    assert [v["version"] for v in registry.list_versions(uri, m)] == ["1", "2"]
    tags = registry.list_versions(uri, m)[1]["tags"]
    assert (tags["model_key"], tags["eval_key"]) == ("k2", "k2")
    # The tag schema describes every tag the version holds, and reads them back as written.
    t = registry.VersionTags.from_tags(tags)
    assert (t.eval_hash, t.primary_metric, t.metrics, t.lineage) == (
        "e1", "val_ppl", {"val_ppl": 5.0}, {"data_version": "d"})
    assert t.decision and t.rejected is None and t.to_tags() == tags


def test_the_tag_cap_is_the_one_mlflows_sql_store_has():
    """A registered model's tags and descriptions are cut at the cap; a version's tag holds at
    least as much (unlimited since MLflow's schema migration of 2025-06)."""
    from mlflow.store.model_registry.dbmodels import models as db

    from gpt.registry.tags import VALUE_CAP

    for column in (db.SqlRegisteredModelTag.value, db.SqlModelVersion.description,
                   db.SqlRegisteredModel.description):
        assert column.type.length == VALUE_CAP, column
    assert (db.SqlModelVersionTag.value.type.length or VALUE_CAP) >= VALUE_CAP


def test_a_version_is_logged_ready_to_serve_and_an_unservable_task_registers_nothing(
        tmp_path, uri, m):
    import mlflow

    from gpt.registry.tracking import global_uri

    model, tok = tiny_hf(tmp_path)
    register(uri, m, model, tok, 4.0)
    with global_uri(uri):
        info = mlflow.models.get_model_info(f"models:/{m}@champion")
    assert info.flavors["python_function"]["config"] == {
        "handle_long_generation": "hole", "max_new_tokens": 16, "do_sample": False,
        "temperature": 1.0, "top_k": 50, "top_p": 1.0, "return_full_text": False}
    assert {p.name: p.default for p in info.signature.params}["max_new_tokens"] == 16
    assert tok.model_max_length > 10**9  # the caller's tokenizer is left as it was
    c = candidate(m + "x", model, tok, 3.0)
    c.task = "fill-mask"
    with pytest.raises(RegistryError, match=f"model '{m}x': task 'fill-mask' cannot be served; "
                                            "use text-generation or text-classification"):
        registry.register(c, registry.Tracking(uri, "test"))
    assert not registry.client(uri).search_registered_models(f"name='{m}x'")


def test_rollback_skips_deleted_versions(uri, m):
    _fake_versions(uri, m, 3)
    for v in ("1", "2", "3"):
        registry.promote(uri, m, v, f"to {v}")
    registry.client(uri).delete_model_version(m, "2")
    assert registry.rollback(uri, m, "bad")["version"] == "1"


@pytest.mark.parametrize(("call", "match"), [
    (lambda u, m: registry.promote(u, "nope", "1", "r"),
     r"no registered model 'nope'.*registered models: .*m-"),
    (lambda u, m: registry.promote(u, m, "9", "r"), r"no version '9'; versions: 1, 2"),
    (lambda u, m: registry.promote(u, m, "1", " "), "needs --reason"),
    (lambda u, m: registry.rollback(u, m, "r"), "no champion to roll back"),
    (lambda u, m: registry.rollback(u, "nope", "r"), "no registered model 'nope'"),
    (lambda u, m: registry.champion_history(u, "nope"), "no registered model 'nope'"),
])
def test_governance_errors_name_what_exists(uri, m, call, match):
    _fake_versions(uri, m, 2)
    with pytest.raises(RegistryError, match=match):
        call(uri, m)


def test_promote_same_champion_refused(uri, m):
    _fake_versions(uri, m, 1)
    registry.promote(uri, m, "v1", "first")
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(uri, m, "1", "again")


def test_cli_promote_rollback_models_history(uri, m):
    from typer.testing import CliRunner

    from gpt.cli import app

    _fake_versions(uri, m, 2)
    runner = CliRunner()
    r = runner.invoke(app, ["promote", m, "1", "--reason", "baseline", "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["promote", m, "2", "-r", "better", "--tracking-uri", uri])
    assert "v1 -> v2" in r.output
    r = runner.invoke(app, ["rollback", m, "-r", "regression", "--tracking-uri", uri])
    assert r.exit_code == 0 and "v2 -> v1" in r.output, r.output
    r = runner.invoke(app, ["models", "--history", "--tracking-uri", uri], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "champion history" in r.output and "regression" in r.output
    r = runner.invoke(app, ["rollback", m, "--tracking-uri", uri])
    assert r.exit_code != 0  # --reason is required


def test_cli_error_is_one_line_exit_2(uri, m, monkeypatch, capsys):
    from gpt.cli import app, run_app

    _fake_versions(uri, m, 1)
    monkeypatch.setattr("sys.argv", ["gptops", "promote", m, "7", "-r", "x",
                                     "--tracking-uri", uri])
    with pytest.raises(SystemExit) as exc:
        run_app(app)
    assert exc.value.code == 2
    assert "no version '7'; versions: 1" in capsys.readouterr().out


def test_pointing_mlflow_at_a_store_leaves_no_global_trace(tmp_path, monkeypatch):
    import os

    import mlflow

    from gpt.registry.tracking import global_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    with global_uri(f"sqlite:///{tmp_path / 'x.db'}"):
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("x.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ  # children would otherwise inherit it
    assert mlflow.get_tracking_uri() == before


def test_runs_nest_under_the_pipeline_run_and_keep_their_true_duration(uri):
    """A step's child run ends with the step; logging its model later does not stretch it."""
    import time

    import mlflow

    from gpt.registry.tracking import Dataset, child_run, pipeline_run, reopened

    c = registry.client(uri)
    tracking = registry.Tracking(uri, "nesting", tags={"data_version": "dv1"})
    with pipeline_run(tracking, "flow-run-name") as t:
        with child_run(t, "pretrain k1", {"step_key": "k1"}, {"train.lr": 0.1},
                       Dataset("tokens-dv1", "dv1", "/tmp/ws/data/tokens")) as run_id:
            pass
        ended = c.get_run(run_id).info
        time.sleep(0.05)
        with reopened(uri, run_id):
            mlflow.log_text("later", "model/README.txt")
    child, parent = c.get_run(run_id), c.get_run(t.parent_run_id)
    assert (child.info.status, child.info.end_time) == ("FINISHED", ended.end_time)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.run_name == "flow-run-name" and parent.info.status == "FINISHED"
    assert child.data.tags["data_version"] == "dv1" and child.data.params["train.lr"] == "0.1"
    (dataset,) = child.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("tokens-dv1", "dv1")


def test_a_failing_step_marks_its_run_and_the_pipeline_run_failed(uri):
    from gpt.registry.tracking import child_run, pipeline_run

    c = registry.client(uri)
    tracking = registry.Tracking(uri, "nesting")
    with pytest.raises(RuntimeError), pipeline_run(tracking, "failing") as t, \
            child_run(t, "finetune k2", {}, {}) as run_id:
        raise RuntimeError("boom")
    assert c.get_run(run_id).info.status == "FAILED"
    assert c.get_run(t.parent_run_id).info.status == "FAILED"


def test_experiments_open_in_mlflows_model_training_view(tmp_path):
    """MLflow 3's UI shows an experiment as model training (not GenAI traces) by its kind tag:
    set on new experiments, and added to one an older gptops made."""
    from gpt.registry.tracking import EXPERIMENT_KIND, client, experiment_id

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = client(uri)
    new = experiment_id(uri, "gptops")
    assert c.get_experiment(new).tags[EXPERIMENT_KIND[0]] == "custom_model_development"
    older = c.create_experiment("made-before", artifact_location=(tmp_path / "a").as_uri())
    assert EXPERIMENT_KIND[0] not in c.get_experiment(older).tags
    assert experiment_id(uri, "made-before") == older
    assert c.get_experiment(older).tags[EXPERIMENT_KIND[0]] == "custom_model_development"
