"""Scenario 3 (stale runs): a killed run left its MLflow runs RUNNING forever. The next run in
the workspace (which holds the workspace, so nothing else can be running there) marks them
KILLED and says so."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT_ROOT, RUN_OVERRIDES

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def test_the_next_run_marks_a_killed_runs_mlflow_runs_killed(pipeline_run, tmp_path):
    from gpt import registry

    ws = tmp_path / "ws"
    shutil.copytree(pipeline_run[0], ws, symlinks=True)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "GPTOPS_PROGRESS": "plain"}
    sets = [a for o in RUN_OVERRIDES for a in ("--set", o)]
    before = set((ws / ".gptops" / "runs" / "pretrain").iterdir())
    # Killed after its first checkpoint, 20 steps in (not max_steps // checkpoints = 1500).
    long = ["train.max_steps=3000", f"train.checkpoints={3000 // 20}", "train.eval_interval=3000"]
    killed = subprocess.Popen([sys.executable, "-m", "flows.cli", "pretrain", "-w", str(ws), *sets,
                               *[a for o in long for a in ("--set", o)]], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        new = set((ws / ".gptops" / "runs" / "pretrain").iterdir()) - before
        if new and list(next(iter(new)).glob("checkpoints/ckpt-*")):
            break
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)

    uri = registry.resolve_tracking_uri("", ws)
    c = registry.client(uri)
    exp = c.get_experiment_by_name("gptops")
    running = c.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
    assert {r.data.tags.get("gptops.step", "parent") for r in running} == {"parent", "pretrain"}

    nxt = subprocess.run([sys.executable, "-m", "flows.cli", "finetune", "-w", str(ws), *sets],
                         capture_output=True, text=True, env=env, timeout=600)
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    assert "marked 2 MLflow run(s) left RUNNING by a killed run of this workspace as KILLED" \
        in nxt.stdout + nxt.stderr
    for r in running:
        assert c.get_run(r.info.run_id).info.status == "KILLED"
    assert not c.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def test_the_next_flow_run_marks_stale_flow_runs_crashed(prefect_server, tmp_path):
    """The Prefect side: flow runs of this workspace left RUNNING by a dead process (and their
    task runs) become Crashed; one whose process lives (a run waiting for the workspace), one
    just started with no record yet, and one of another workspace are left alone."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.pipeline import crash_stale_flow_runs
    from gpt.layout import Workspace
    from gpt.workspace_lock import live_run

    @flow(name="stale-probe")
    def probe(workdir: str) -> None:  # never run: only its runs are created
        pass

    ws, other = str(tmp_path / "ws"), str(tmp_path / "other")
    with get_client(sync_client=True) as client:
        dead, waiting, new = (client.create_flow_run(probe, parameters={"workdir": ws},
                                                     state=Running()) for _ in range(3))
        theirs = client.create_flow_run(probe, parameters={"workdir": other}, state=Running())
        task = client.create_task_run(task=_probe_task(), flow_run_id=dead.id,
                                      dynamic_key="0", state=Running())
        # A killed process's record: the file is there, nobody holds its lock.
        Workspace(tmp_path / "ws").live_runs.mkdir(parents=True)
        Workspace(tmp_path / "ws").live_run(str(dead.id)).write_text("flow run (pid 1)\n")
        with live_run(ws, str(waiting.id), "flow run 'waiting'"):
            assert crash_stale_flow_runs(ws, current=None) == [dead.name]
        assert client.read_flow_run(dead.id).state.type.value == "CRASHED"
        assert client.read_task_run(task.id).state.type.value == "CRASHED"
        for fr in (waiting, new, theirs):
            assert client.read_flow_run(fr.id).state.type.value == "RUNNING"
        records = Workspace(tmp_path / "ws").live_runs
        assert not (records / f"{dead.id}.lock").exists()  # the dead record is swept
        assert crash_stale_flow_runs(ws, current=None) == [waiting.name]  # its process ended
        assert not list(records.iterdir())


def _probe_task():
    from prefect import task

    @task(name="stale-probe-task")
    def t() -> None:
        pass

    return t
