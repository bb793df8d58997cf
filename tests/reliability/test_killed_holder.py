"""Issue 23, items 1 and 4: a dead holder never blocks, a live waiter is never marked Crashed.

Two `gptops run` on one workspace, each with its own Prefect server on the workspace's database
(no PREFECT_API_URL), both waiting while the test holds the workspace. Before: the run that got
the workspace marked the other, alive and waiting, Crashed (under `gptops serve` that fires the
re-run automation); and once the holder was SIGKILLed, the waiter hung for good at the Prefect
concurrency limit whose lease had lived in the dead run's server. Now both wait saying for whom
(every ``GPTOPS_WAIT_LOG_S``), the waiter is never Crashed, and after the SIGKILL it marks the
killed run Crashed, resumes from its checkpoint and finishes within a time limit.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import DATA_OVERRIDES, PROJECT_ROOT, RUN_OVERRIDES, make_workspace

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(600)]
#: Tiny training (30 steps) that writes a checkpoint early (every 5 steps): the holder is killed
#: at the first, 25 steps before its training would end, and the waiter resumes from it. No
#: built-in benchmarks (evaluation still runs).
QUICK = [*RUN_OVERRIDES, "train.checkpoints=6", "finetune.max_steps=10",
         "sft.enabled=false", "evaluate.builtin_benchmarks=false"]


def _wait_for(cond, timeout: float, what: str, procs=()) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        for p in procs:
            assert p.poll() is None, f"{what}: a run exited early ({p.returncode})"
        time.sleep(0.3)
    pytest.fail(f"{what}: not within {timeout:.0f}s")


def test_a_dead_holder_never_blocks_and_a_waiter_is_never_crashed(tmp_path, data_ready):
    from gpt.workspace_lock import workspace_lock

    ws = data_ready(tmp_path / "ws")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PYTHONPATH": str(PROJECT_ROOT), "GPTOPS_PROGRESS": "plain",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GPTOPS_WAIT_LOG_S": "2"})
    sets = [a for o in QUICK for a in ("--set", o)]
    logs = [tmp_path / "run0.log", tmp_path / "run1.log"]
    runs: list[subprocess.Popen] = []
    try:
        with workspace_lock(ws, "the test"):
            for log in logs:
                runs.append(subprocess.Popen(
                    [sys.executable, "-m", "flows.cli", "run", "-w", str(ws), *sets],
                    stdout=log.open("w"), stderr=subprocess.STDOUT, env=env))
            # Both flow runs are Running and wait, saying for whom, again and again.
            _wait_for(lambda: all(log.read_text().count("waiting for workspace") >= 2
                                  for log in logs), 240, "both runs waiting", runs)
        for log in logs:
            line = next(ln for ln in log.read_text().splitlines() if "waiting for workspace" in ln)
            assert f"the test (pid {os.getpid()} on " in line and "waiting since" in line, line

        lock = ws / ".gptops" / "workspace.lock"
        _wait_for(lambda: "flow run '" in lock.read_text(), 120, "a run holding the workspace")
        holder = next(p for p in runs if f"(pid {p.pid} " in lock.read_text())
        waiter = next(p for p in runs if p is not holder)
        wlog = logs[runs.index(waiter)]
        ckpts = ws / ".gptops" / "runs" / "pretrain"
        _wait_for(lambda: list(ckpts.glob("*/checkpoints/ckpt-*")), 300, "a checkpoint",
                  [holder])
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        t0 = time.time()
        waiter.wait(timeout=420)  # before: never (the dead run's slot stayed taken)
        out = wlog.read_text()
        assert waiter.returncode == 0, out
        print(f"the waiter finished {time.time() - t0:.0f}s after the holder was killed")
        assert "as Crashed" in out and "resumed from ckpt-" in out, out
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.wait()

    db = sqlite3.connect(ws / ".gptops" / "prefect.db")
    history: dict[str, list[str]] = {}
    for name, state in db.execute(
            "SELECT fr.name, s.type FROM flow_run_state s JOIN flow_run fr "
            "ON s.flow_run_id = fr.id ORDER BY s.timestamp"):
        history.setdefault(name, []).append(state)
    finals = {name: states[-1] for name, states in history.items()}
    assert sorted(finals.values()) == ["COMPLETED", "CRASHED"], history
    for states in history.values():
        if states[-1] == "COMPLETED":  # the waiter
            assert "CRASHED" not in states, history


def _slots(ws) -> dict[str, int]:
    db = sqlite3.connect(ws / ".gptops" / "prefect.db")
    try:
        return dict(db.execute("SELECT name, active_slots FROM concurrency_limit_v2 "
                               "WHERE name LIKE 'deployment:%'"))
    finally:
        db.close()


def test_serve_releases_slots_of_a_dead_server(tmp_path):
    """`gptops serve` SIGKILLed (all of it) while a served run holds its deployment's slot: the
    slot's lease died with the server. Before, every later run of that deployment waited for it
    for good; now the next `gptops serve` releases it, saying so, and the next run starts."""
    import psutil
    from prefect.client.orchestration import SyncPrefectClient

    from tests.serving import start_serve, stop_serve

    ws = make_workspace(tmp_path / "ws", DATA_OVERRIDES)
    log = tmp_path / "serve.log"
    proc, api, _ = start_serve(ws, log)
    try:
        with SyncPrefectClient(api) as client:
            dep = client.read_deployment_by_name("training_pipeline/retrain")
            first = client.create_flow_run_from_deployment(
                dep.id, parameters={"overrides": RUN_OVERRIDES})
            _wait_for(lambda: client.read_flow_run(first.id).state.type.value == "RUNNING",
                      120, "the served run Running", [proc])
    finally:
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.kill()
        proc.wait()
    assert 1 in _slots(ws).values()  # the dead server's lease: nobody will free it

    log2 = tmp_path / "serve2.log"
    proc, api, _ = start_serve(ws, log2)
    try:
        assert "released 1 concurrency slot(s) held by runs of a server that died" \
            in log2.read_text(), log2.read_text()
        with SyncPrefectClient(api) as client:
            nxt = client.create_flow_run_from_deployment(
                dep.id, parameters={"overrides": RUN_OVERRIDES})
            # Before: AwaitingConcurrencySlot for good.
            _wait_for(lambda: client.read_flow_run(nxt.id).state.type.value == "RUNNING",
                      120, "the next served run Running", [proc])
    finally:
        stop_serve(proc)
