"""Scenario 3 (crashed served run): the process of a served run is killed. Before, the run stayed
Crashed until someone pressed Run again. Now the deployment's own trigger (a Prefect automation
declared with the deployment, flows/deploy.py and prefect.yaml) runs it again once, with the
crashed run's parameters, so it resumes from its checkpoints; a crash of that re-run is not re-run.

The real deployments are served (``python -m flows.deploy``) against the session's Prefect server,
and each run's process is SIGKILLed as soon as it is Running: nothing is trained.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from uuid import UUID

import pytest

from tests.conftest import DATA_OVERRIDES, PROJECT_ROOT, RUN_OVERRIDES, make_workspace

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _runs_of(client, deployment_id: UUID) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _wait_state(client, run_id: UUID, kind: str, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = client.read_flow_run(run_id)
        if run.state and run.state.type.value == kind:
            return run
        time.sleep(0.3)
    pytest.fail(f"flow run {run_id} did not reach {kind} in {timeout:.0f}s (it is {run.state})")


def _kill_run_process(runner: subprocess.Popen, run_id: UUID) -> int:
    """SIGKILL the process (and what it started) that the runner started for flow run ``run_id``."""
    import psutil

    for proc in psutil.Process(runner.pid).children(recursive=True):
        try:
            if proc.environ().get("PREFECT__FLOW_RUN_ID") == str(run_id):
                for p in [*proc.children(recursive=True), proc]:
                    p.send_signal(signal.SIGKILL)
                return proc.pid
        except psutil.NoSuchProcess:
            continue
    pytest.fail(f"no process of flow run {run_id} under the runner")


def test_a_crashed_served_run_is_re_run_once_with_its_parameters(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.serve import DEPLOYMENTS, wait_deployments

    ws = make_workspace(tmp_path / "ws", DATA_OVERRIDES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_API_URL": prefect_server, "PREFECT_RUNNER_POLL_FREQUENCY": "1",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(PROJECT_ROOT),
                "GPTOPS_PROGRESS": "plain"})
    log = tmp_path / "runner.log"
    with log.open("w") as out:
        runner = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--workdir", str(ws),
                                   "--cron", "0 0 1 1 *"], env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_deployments(prefect_server, runner, DEPLOYMENTS)
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name("training_pipeline/retrain")
            (auto,) = client.read_resource_related_automations(f"prefect.deployment.{dep.id}")
            assert auto.trigger.expect == {"prefect.flow-run.Crashed"} and auto.enabled

            first = client.create_flow_run_from_deployment(
                dep.id, parameters={"overrides": RUN_OVERRIDES, "max_steps": 7})
            _wait_state(client, first.id, "RUNNING")
            _kill_run_process(runner, first.id)
            crashed = _wait_state(client, first.id, "CRASHED", timeout=60)
            t_crash = time.time()

            deadline = time.time() + 90
            while not (others := [r for r in _runs_of(client, dep.id) if r.id != first.id]):
                assert time.time() < deadline, f"no re-run of {first.name} within 90 s"
                time.sleep(0.3)
            fired_after = time.time() - t_crash
            (rerun,) = others
            assert rerun.parameters == crashed.parameters  # same step keys: it resumes
            assert rerun.parameters["max_steps"] == 7
            assert rerun.created_by is not None and rerun.created_by.type == "AUTOMATION"
            assert rerun.created_by.id == auto.id

            # The re-run crashes too: it is not re-run again (the trigger's window).
            _wait_state(client, rerun.id, "RUNNING")
            _kill_run_process(runner, rerun.id)
            _wait_state(client, rerun.id, "CRASHED", timeout=60)
            time.sleep(max(15.0, 3 * fired_after))
            assert {r.id for r in _runs_of(client, dep.id)} == {first.id, rerun.id}
            print(f"re-run created {fired_after:.1f}s after the crash")
    except BaseException:
        print(log.read_text()[-6000:])
        raise
    finally:
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()


def test_a_run_left_running_by_a_killed_serve_is_re_run_when_the_next_run_crashes_it(
        prefect_server, tmp_path, monkeypatch):
    """With the whole `gptops serve` killed nobody reports the crash; the workspace's next run
    sets the run Crashed (crash_stale_flow_runs), and the trigger re-runs it then."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.deploy import build_deployments
    from flows.pipeline import crash_stale_flow_runs
    from gpt.layout import Workspace

    ws = make_workspace(tmp_path / "ws", DATA_OVERRIDES)
    monkeypatch.chdir(PROJECT_ROOT)  # the deployments' entrypoint is relative to the project
    # Registered (with their triggers, whose windows start afresh) but not served: the re-run
    # waits Scheduled.
    nightly = next(d for d in build_deployments(str(ws), cron="0 0 1 1 *")
                   if d.name == "nightly")
    dep_id = nightly.apply()
    with get_client(sync_client=True) as client:
        left = client.create_flow_run_from_deployment(
            dep_id, parameters={"overrides": ["train.max_steps=5"]})
        client.set_flow_run_state(left.id, Running(), force=True)
        # What its killed process left: its live-run record, locked by nobody.
        Workspace(ws).live_runs.mkdir(parents=True, exist_ok=True)
        Workspace(ws).live_run(str(left.id)).write_text("flow run (pid 1)\n")
        assert crash_stale_flow_runs(str(ws), current=None) == [left.name]
        deadline = time.time() + 60
        while not (reruns := [r for r in _runs_of(client, dep_id)
                              if r.created_by and r.created_by.type == "AUTOMATION"]):
            assert time.time() < deadline, "no re-run within 60 s"
            time.sleep(0.3)
        (rerun,) = reruns
        assert rerun.parameters == client.read_flow_run(left.id).parameters
        assert rerun.parameters["overrides"] == ["train.max_steps=5"]
        assert rerun.state.is_scheduled()
        client.delete_flow_run(rerun.id)  # nothing serves it
