"""Training on several processes, launched by the flow through torch's elastic launcher.

On copies of the pipeline fixture's workspace, with gloo on CPU:
- the number of processes is in no step key (the global batch does not depend on it), so a
  2-process run of the fixture's params reuses everything;
- a flow run with 2 processes trains pretrain, fine-tune and SFT on 2 ranks each (their log
  lines reach the run log prefixed with the rank), the ranks end with equal weights, and it
  registers;
- a rank killed with SIGKILL fails the pretrain task with one message naming the rank, and the
  task's retry resumes from the last checkpoint and the run finishes;
- two agents started side by side with ``launch.nnodes=2`` on loopback (node 1 as a plain
  ``gptops pretrain`` with ``launch.node_rank=1``) train one model, and node 0 records it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import PROJECT_ROOT, RUN_OVERRIDES

pytestmark = pytest.mark.slow

GPTOPS = [sys.executable, "-m", "flows.cli"]


@pytest.fixture()
def copied(pipeline_run, tmp_path):
    ws, first, _ = pipeline_run
    dst = tmp_path / "ws"
    shutil.copytree(ws, dst, symlinks=True)
    return dst, first


def _env(prefect_server: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": prefect_server, "GPTOPS_PROGRESS": "plain",
            "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}


def _versions(uri: str) -> set[tuple[str, str]]:
    from gpt.registry import list_versions

    return {(v["name"], v["version"]) for v in list_versions(uri)}


def test_the_number_of_processes_is_in_no_step_key(copied):
    from flows.pipeline import training_pipeline
    from gpt.registry import resolve_tracking_uri

    ws, first = copied
    before = _versions(resolve_tracking_uri("", ws))
    result = training_pipeline(overrides=RUN_OVERRIDES, processes="2", workdir=str(ws))
    for step in ("pretrain", "finetune", "sft"):
        assert result[step]["reused"], step
        assert result[step]["key"] == first[step]["key"], step
    assert _versions(result["tracking_uri"]) == before  # nothing registered again


def test_a_flow_run_on_two_processes_trains_and_registers(copied, caplog):
    from flows.pipeline import training_pipeline

    ws, first = copied
    with caplog.at_level(logging.INFO, logger="gpt"):
        result = training_pipeline(overrides=RUN_OVERRIDES + ["train.max_steps=32"],
                                   processes="2", workdir=str(ws))
    for step in ("pretrain", "finetune", "sft"):
        r = result[step]
        assert not r["reused"] and r["steps"] > 0, step
        assert r["info"]["processes"] == 2, step
        digests = r["info"]["rank_digests"]
        assert len(digests) == 2 and digests[0] == digests[1], f"{step}: ranks diverged"
    lines = caplog.messages
    for rank in (0, 1):
        assert any(m.startswith(f"[rank{rank}] pretrain: rank {rank} of 2 is pid") for m in lines)
    assert any(m.startswith("[rank0] pretrain: step 32/32") for m in lines)
    assert any("finetune: launching 2 processes" in m for m in lines)
    # It registered a new base (new weights), gated like any other.
    reg = result["registered"]["base"]
    assert reg["reused"] is False and reg["version"] != first["registered"]["base"]["version"]


def _watch(proc: subprocess.Popen, out: list[str], on_line) -> threading.Thread:
    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            out.append(line)
            on_line(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def test_a_rank_killed_with_sigkill_fails_the_task_and_the_retry_resumes(copied,
                                                                          prefect_server):
    ws, _ = copied
    # The kill lands at the first checkpoint (step 20), 180 steps before the end.
    total, checkpoints = 200, 10
    every = total // checkpoints
    steps = [f"train.max_steps={total}", f"train.checkpoints={checkpoints}",
             f"train.eval_interval={total // 2}", "sft.enabled=false"]
    cmd = [*GPTOPS, "run", "-w", str(ws), *[a for o in RUN_OVERRIDES + steps
                                             for a in ("--set", o)],
           "--set", "launch.nproc_per_node=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(prefect_server), cwd=ws)
    out: list[str] = []
    rank1: list[int] = []

    def on_line(line: str) -> None:
        m = re.search(r"\[rank1\] pretrain: rank 1 of 2 is pid (\d+)", line)
        if m:
            rank1.append(int(m.group(1)))

    pump = _watch(proc, out, on_line)
    deadline = time.time() + 240
    ckpts = ws / ".gptops" / "runs" / "pretrain"
    fixture_keys = set(ckpts.iterdir())

    def checkpointed() -> bool:
        return any(list(k.glob("checkpoints/ckpt-*")) for k in set(ckpts.iterdir()) - fixture_keys)

    while time.time() < deadline and not (rank1 and checkpointed()):
        assert proc.poll() is None, "".join(out)
        time.sleep(0.2)
    assert rank1, "no rank 1 pid in the log:\n" + "".join(out)
    os.kill(rank1[0], signal.SIGKILL)
    rc = proc.wait(timeout=600)
    pump.join(timeout=10)
    text = "".join(out)
    assert rc == 0, text
    assert "pretrain: rank 1 of 2 failed: Signal 9 (SIGKILL)" in text, text
    resumed = re.search(r"resumed from ckpt-(\d+) \(step (\d+)", text)
    assert resumed and int(resumed.group(2)) >= every, text
    (key,) = set(ckpts.iterdir()) - fixture_keys
    result = json.loads((key / "result.json").read_text())
    assert result["steps"] == total - int(resumed.group(2))  # the retry ran only the rest
    assert result["info"]["rank_digests"][0] == result["info"]["rank_digests"][1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback_train_one_model(copied, prefect_server):
    ws, _ = copied
    port = _free_port()
    common = [*RUN_OVERRIDES, "train.max_steps=34", "launch.nnodes=2",
              "launch.nproc_per_node=1", f"launch.rdzv_endpoint=127.0.0.1:{port}"]

    def agent(node: int) -> subprocess.Popen:
        sets = [a for o in [*common, f"launch.node_rank={node}"] for a in ("--set", o)]
        return subprocess.Popen([*GPTOPS, "pretrain", "-w", str(ws), "--json", *sets],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env(prefect_server), cwd=ws)

    node1 = agent(1)  # the worker node first: it waits for node 0's rendezvous
    node0 = agent(0)
    out0, err0 = node0.communicate(timeout=300)
    out1, err1 = node1.communicate(timeout=60)
    assert node0.returncode == 0, err0
    assert node1.returncode == 0, err1
    assert "on node 0 of 2 (rendezvous 127.0.0.1" in err0
    assert "[rank0] pretrain: rank 0 of 2 is pid" in err0 and "[rank1]" not in err0
    assert "[rank1] pretrain: rank 1 of 2 is pid" in err1
    r0, r1 = json.loads(out0), json.loads(out1)
    assert r0["key"] == r1["key"] and r0["steps"] == 34
    assert r0["info"]["processes"] == 2
    d = r0["info"]["rank_digests"]
    assert len(d) == 2 and d[0] == d[1]
    assert r0["run_id"] and r1["run_id"] is None  # node 0 tracked the step, node 1 did not
    assert r1["info"] == {"node_rank": 1, "nnodes": 2}
    done = json.loads((ws / r0["out_dir"] / "result.json").read_text())  # relative: joins
    assert done["run_id"] == r0["run_id"]
