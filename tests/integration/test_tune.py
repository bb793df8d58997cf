"""`gptops tune`: an Optuna study of real pretraining trials (real Optuna, MLflow, torch), through
the CLI as a user types it.

- 6 trials x 20 steps over a learning-rate range reaching far too small: all finish, some are
  pruned early (their MLflow runs KILLED), the best trial's model is registered through the gate;
- a new study with the same seed suggests the same trials and trains none of them again (the
  finished ones are reused by their step keys, the pruned ones replay what they reported);
- a study SIGKILLed mid-trial: `gptops tune` again finishes it without re-running the trials
  that had finished (the one that was running resumes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

#: The tiny model and short trials; pruning looks at val_loss every 5 steps.
SETS = ["model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.block_size=64",
        "train.batch_size=8", "train.eval_interval=5", "train.eval_batches=2",
        "train.checkpoints=4", "train.warmup_steps=2", "train.min_lr_factor=0",
        "train.log_interval=0", "evaluate.ppl_batches=2", "tune.steps_per_trial=20",
        "tune.pruner_startup_trials=2",
        "tune.space={train.lr: {low: 0.000001, high: 0.01, log: true}}"]
TRIALS = 6


def gptops(ws: Path, *args: str, sets: list[str] = (), timeout: float = 600,
           ) -> subprocess.CompletedProcess:
    flags = [a for s in [*SETS, *sets] for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "flows.cli", "tune", "-w", str(ws), *flags,
                           *args], capture_output=True, text=True, timeout=timeout,
                          env=_env())


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "GPTOPS_PROGRESS": "plain"}


def _json(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("{"):])


@pytest.fixture(scope="module")
def ws(tmp_path_factory, data_ready) -> Path:
    """A workspace whose data stages have run (the small slice of the built-in corpus)."""
    return data_ready(tmp_path_factory.mktemp("tune") / "ws")


@pytest.fixture(scope="module")
def first(ws) -> tuple[dict, float]:
    t0 = time.perf_counter()
    out = gptops(ws, "--study", "first", "--json", sets=[f"tune.trials={TRIALS}",
                                                         "tune.seed=3"])
    return _json(out), time.perf_counter() - t0


@pytest.mark.timeout(900)
def test_trials_finish_some_are_pruned_and_the_best_is_registered(ws, first):
    from gpt import registry
    from gpt.registry.tracking import PARENT_TAG, STOPPED_EARLY_TAG

    result, seconds = first
    print(f"tune: {result['trials']} trials, {result['pruned']} pruned, best "
          f"{result['best_value']:.4f} (trial {result['best_trial']}), {seconds:.0f} s")
    assert result["trials"] == TRIALS == result["trained"]
    assert 1 <= result["pruned"] < TRIALS
    rows = {r["trial"]: r for r in result["rows"]}
    for r in rows.values():  # pruned trials stopped early; complete ones ran every step
        assert r["last_step"] < 20 if r["state"] == "pruned" else r["last_step"] == 20, r
    complete = [r for r in rows.values() if r["state"] == "complete"]
    assert result["best_value"] == min(r["value"] for r in complete)
    best = rows[result["best_trial"]]
    assert best["params.train.lr"] == max(r["params.train.lr"] for r in complete)  # lr decides
    reg = result["registered"]
    assert reg["name"] == "gptops-base" and reg["version"] == "1" and reg["champion"]
    uri = registry.default_tracking_uri(ws)
    c = registry.client(uri)
    mv = c.get_model_version("gptops-base", "1")
    assert mv.tags["gptops.study"] == "first" and mv.tags["gptops.trial"] == str(best["trial"])
    assert mv.tags["model_key"] == best["step_key"]
    children = c.search_runs([c.get_experiment_by_name("gptops").experiment_id],
                             filter_string=f"tags.`{PARENT_TAG}` = '{result['mlflow_run_id']}'")
    by_trial = {int(r.data.tags["gptops.trial"]): r for r in children}
    assert sorted(by_trial) == sorted(rows)  # one nested run per trial
    for n, run in by_trial.items():
        pruned = rows[n]["state"] == "pruned"
        assert run.info.status == ("KILLED" if pruned else "FINISHED")
        assert (STOPPED_EARLY_TAG in run.data.tags) == pruned
    assert mv.run_id == by_trial[best["trial"]].info.run_id  # the model is the trial's run's
    names = {a.path for a in c.list_artifacts(result["mlflow_run_id"], "tune")}
    assert {"tune/trials.json", "tune/trials.csv", "tune/best.json", "tune/history.png"} <= names


@pytest.mark.timeout(600)
def test_a_seeded_rerun_picks_the_same_best_and_trains_no_trial_again(ws, first):
    result, _ = first
    again = _json(gptops(ws, "--study", "again", "--json",
                         sets=[f"tune.trials={TRIALS}", "tune.seed=3"]))
    assert again["trained"] == 0
    assert again["best_params"] == result["best_params"]
    assert again["best_value"] == result["best_value"]
    assert [(r["state"], r["params.train.lr"]) for r in again["rows"]] == \
        [(r["state"], r["params.train.lr"]) for r in result["rows"]]
    assert again["registered"]["reused"]  # the same weights: the same version
    same = _json(gptops(ws, "--study", "first", "--json",
                        sets=[f"tune.trials={TRIALS}", "tune.seed=3"]))
    assert same["trained"] == 0 and len(same["rows"]) == TRIALS  # finished: nothing to run


def _finished(storage: str, study: str) -> list[int]:
    import optuna

    try:
        s = optuna.load_study(study_name=study, storage=storage)
    except KeyError:  # not created yet
        return []
    return [t.number for t in s.trials if t.state.name in ("COMPLETE", "PRUNED")]


@pytest.mark.timeout(900)
def test_sigkill_mid_study_then_tune_again_resumes_without_rerunning_finished_trials(ws):
    import optuna

    from gpt.tune import storage_url

    # Enough trials that the kill, right after the first one ends, lands before the last:
    # one trial takes about a second on an idle machine.
    sets = ["tune.trials=6", "tune.seed=12", "tune.pruner_startup_trials=1"]
    flags = [a for s in [*SETS, *sets] for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "tune", "-w", str(ws), *flags,
                             "--study", "killed"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())
    storage = storage_url(ws)
    try:
        deadline = time.monotonic() + 600
        while not _finished(storage, "killed"):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # in the next trial (or between two)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    study = optuna.load_study(study_name="killed", storage=storage)
    done = {t.number: t.user_attrs["step_key"] for t in study.trials
            if t.state.name in ("COMPLETE", "PRUNED")}
    assert 1 <= len(done) < 6
    runs = ws / ".gptops" / "runs" / "pretrain"
    stamps = {k: {p.name: p.stat().st_mtime_ns for p in (runs / k).rglob("*")}
              for k in done.values()}

    t0 = time.perf_counter()
    result = _json(gptops(ws, "--study", "killed", "--json", sets=sets, timeout=600))
    seconds = time.perf_counter() - t0
    print(f"resumed: {len(done)} finished before the kill, {result['trained']} trained after, "
          f"{seconds:.0f} s")
    assert result["trials"] == 6
    assert result["trained"] == 6 - len(done)  # the finished ones were not run again
    rows = {r["trial"]: r for r in result["rows"]}
    assert all(rows[n]["state"] in ("complete", "pruned") for n in done)
    failed = [r for r in rows.values() if r["state"] == "fail"]
    assert len(failed) <= 1  # the trial the kill interrupted, re-run with the same values
    if failed and failed[0]["step_key"]:  # killed after its values were drawn
        again = [r for r in rows.values() if r["step_key"] == failed[0]["step_key"]
                 and r["state"] != "fail"]
        assert len(again) == 1
    for key, files in stamps.items():  # nothing of a finished trial was written again
        assert {p.name: p.stat().st_mtime_ns for p in (runs / key).rglob("*")} == files
    assert seconds < 420


def test_a_bad_space_key_is_one_line_before_any_work(tmp_path):
    from gpt.config import PROJECT_PARAMS

    shutil.copy(PROJECT_PARAMS, tmp_path / "params.yaml")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "tune", "-w", str(tmp_path),
                          "--set", "tune.space={train.lrr: [0.001, 0.01]}"],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 2
    text = (out.stdout + out.stderr).strip()
    assert text == ("error: tune.space key 'train.lrr': unknown parameter (did you mean "
                    "'train.lr'?) (known in train: " + ", ".join(sorted(
                        __import__("gpt.config").config.TrainConfig.model_fields)) + ")"), text
    out = subprocess.run([sys.executable, "-m", "flows.cli", "tune", "-w", str(tmp_path),
                          "--set", "tune.space={finetune.lr: [0.001]}"],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 2 and "only model.* and train.* keys" in out.stdout
    assert not (tmp_path / ".gptops").exists()  # nothing started


@pytest.mark.timeout(600)
def test_the_tune_flow_runs_the_same_study_as_a_prefect_run(ws, first, prefect_server):
    from flows.tune import tune

    result, _ = first
    out = tune(overrides=[*SETS, f"tune.trials={TRIALS}", "tune.seed=3"], study="first",
               workdir=str(ws))
    assert out["study"] == "first" and out["trained"] == 0
    assert out["best_params"] == result["best_params"] and out["registered"]["reused"]
