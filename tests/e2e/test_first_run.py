"""The README's first command on a brand-new machine, three times, at the same time.

Each try is a fresh clone with a fresh ``HOME`` and ``PREFECT_HOME`` (no ``~/.prefect``, no
Prefect server running, nothing inherited from the test session); its ``.venv`` is the project's,
as ``scripts/setup.sh`` leaves it, so the workspace's Prefect database starts as a copy of the
blank one setup made. The three run side by side on 2 cores: the busy machine on which the first
start used to time out.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

GPTOPS = [".venv/bin/gptops", "run"]
#: A tiny run: the point is the first start, not the model.
TINY = ["--set", "data.max_docs=400", "--set", "tokenizer.vocab_size=512",
        "--set", "model.n_layer=1", "--set", "model.n_embd=32", "--set", "model.n_head=2",
        "--set", "model.block_size=32", "--max-steps", "10", "--set", "train.eval_interval=5",
        "--set", "train.eval_batches=2", "--set", "finetune.max_steps=5",
        "--set", "sft.max_steps=5", "--set", "evaluate.max_items=4",
        "--set", "sft.max_new_tokens=4", "--set", "evaluate.ppl_batches=2"]
TRIES = 3


def fresh_clone(dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(dest)], check=True)
    (dest / ".venv").symlink_to(PROJECT_ROOT / ".venv")  # set-up is what CI itself runs
    return dest


def fresh_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True)
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR", "HF_HUB_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({"HOME": str(home), "PREFECT_HOME": str(home / ".prefect"), "TERM": "dumb"})
    return env


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("first-run")
    tries = []
    for i in range(TRIES):
        clone = fresh_clone(base / f"clone{i}")
        log = (base / f"out{i}.log").open("w")
        proc = subprocess.Popen(GPTOPS + TINY, cwd=clone, env=fresh_env(base / f"home{i}"),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        tries.append((clone, base / f"out{i}.log", proc, log))
    results = []
    for clone, out, proc, log in tries:
        rc = proc.wait(timeout=1500)
        log.close()
        results.append((clone, out.read_text(), rc))
    return results


def test_first_command_succeeds_every_time(first_runs):
    for _clone, out, rc in first_runs:
        assert rc == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert " ERROR " not in out and "Timed out" not in out
        assert "gptops run summary" in out


def test_versions_are_registered_and_the_flow_run_is_in_the_workspace_database(first_runs):
    from mlflow import MlflowClient

    for clone, _out, _rc in first_runs:
        client = MlflowClient(f"sqlite:///{clone / '.gptops' / 'mlflow.db'}")
        names = {m.name for m in client.search_registered_models()}
        assert names == {"gptops-base", "gptops-package-clf", "gptops-sft"}
        base = client.get_model_version("gptops-base", "1")
        flow_run_id = base.tags["prefect_flow_run_id"].replace("-", "")
        with sqlite3.connect(clone / ".gptops" / "prefect.db") as db:
            rows = db.execute("SELECT replace(id, '-', ''), state_type FROM flow_run").fetchall()
        assert (flow_run_id, "COMPLETED") in rows


def test_one_off_overrides_leave_params_yaml_as_it_was(first_runs):
    for clone, out, _rc in first_runs:
        diff = subprocess.run(["git", "diff", "--exit-code", "--", "params.yaml"], cwd=clone,
                              capture_output=True, text=True)
        assert diff.returncode == 0, diff.stdout
        assert "params.yaml restored" in out


def test_output_is_short_and_says_where_each_line_belongs(first_runs):
    _clone, out, _rc = first_runs[0]
    lines = out.splitlines()
    assert len(lines) < 100, out  # the benchmark rows of the summary (base, SFT) took 6
    # "Finished in state Completed()" names its task, not the logger "prefect.task_runs"
    assert "INFO pretrain" in out and "prefect.task_runs" not in out
    noise = ("git add", "core.autostage", "telemetry", "Writing model shards", "license",
             "Error logging to API",
             "model card")
    assert not [line for line in lines if any(n in line for n in noise)], out
    # the run's own Prefect server has no UI: no dead "View at http://127.0.0.1:4200/..." link
    assert "View at" not in out and "/runs/flow-run/" not in out
    for line in lines:  # commands to copy are never wrapped: each fits on its line
        if line.startswith("    gptops ") or line.startswith("    mlflow "):
            assert line.strip().split()[0] in ("gptops", "mlflow")


def test_second_run_on_the_same_clone_reuses_and_uses_the_same_history(first_runs):
    clone, _out, _rc = first_runs[0]
    env = fresh_env(clone.parent / "home-again")
    out = subprocess.run(GPTOPS + TINY, cwd=clone, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    with sqlite3.connect(clone / ".gptops" / "prefect.db") as db:
        n = db.execute("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'").fetchone()
    assert n == (2,)
    assert "reused" in out.stdout + out.stderr


if __name__ == "__main__":  # pragma: no cover - run by hand: python -m tests.e2e.test_first_run
    sys.exit(pytest.main([__file__, "-v"]))
