"""``gptops serve`` for real: Prefect server + deployment runner + MLflow server on free ports.

One serve process for the module; the retrain deployment is triggered through the Prefect API
(as the UI's Run button does) and must register a new model version in MLflow.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import RUN_OVERRIDES
from tests.serving import CRON, GPTOPS, TZ, free_port, start_serve, stop_serve

pytestmark = [pytest.mark.slow]
#: What the Run button is given: the small run, without the SFT model and the built-in
#: benchmarks (nothing here reads them).
RETRAIN = [*RUN_OVERRIDES, "sft.enabled=false", "evaluate.builtin_benchmarks=false"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_ready):
    import psutil

    ws = data_ready(tmp_path_factory.mktemp("serve") / "ws")
    log = ws.parent / "serve.log"
    proc, api, ui = start_serve(ws, log)
    info = {"proc": proc, "api": api, "ui": ui, "ws": ws, "log": log,
            "children": psutil.Process(proc.pid).children(recursive=True)}
    yield info
    if proc.poll() is None:
        stop_serve(proc)


def run_async(coro):
    return asyncio.run(coro)


def prefect(api: str):
    from prefect.client.orchestration import PrefectClient

    return PrefectClient(api=api)


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([GPTOPS, "serve", "--workdir", str(tmp_path / "ws"), "--prefect-port",
                            str(port), "--mlflow-port", str(free_port())],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and "already in use" in lines[0] and str(port) in lines[0], lines


def test_deployments_are_served(served):
    with urllib.request.urlopen(f"{served['api']}/health", timeout=10) as r:
        assert r.status == 200

    async def read():
        async with prefect(served["api"]) as c:
            deps = {d.name: d for d in await c.read_deployments()}
            autos = {name: await c.read_resource_related_automations(f"prefect.deployment.{d.id}")
                     for name, d in deps.items()}
            return deps, autos

    deps, autos = run_async(read())
    assert set(deps) >= {"nightly", "retrain"}
    nightly, retrain = deps["nightly"], deps["retrain"]
    assert len(nightly.schedules) == 1
    sched = nightly.schedules[0].schedule
    assert (sched.cron, sched.timezone) == (CRON, TZ) and nightly.schedules[0].active
    assert retrain.schedules == []
    for d in (nightly, retrain):
        assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1
        assert d.parameters["workdir"] == str(served["ws"])
        assert not d.paused
        # a crashed run is re-run once (tests/reliability/test_crashed_served_run.py)
        (auto,) = autos[d.name]
        assert auto.enabled and auto.trigger.expect == {"prefect.flow-run.Crashed"}
        assert {"max_steps", "overrides", "profile"} <= set(d.parameter_openapi_schema[
            "properties"])


def test_gptops_run_on_the_served_workspace_records_into_the_same_server(served):
    """One workspace, one run history: `gptops run` finds the live `serve` and uses its API."""
    import os

    from flows.server import served_api, workspace_api

    assert served_api(served["ws"]) == served["api"]
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("PREFECT_")]:
            del os.environ[key]
        with workspace_api(served["ws"]) as api:
            assert api == served["api"] and os.environ["PREFECT_API_URL"] == served["api"]
            # no second server was started on the workspace's database
            assert not (served["ws"] / ".gptops" / "prefect-server.log").exists()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_terminal_shows_addresses_not_the_servers_logs(served):
    """Prefect's banner, MLflow's warnings and every HTTP request go to .gptops/logs/; the
    terminal keeps the addresses and names those files."""
    terminal = served["log"].read_text()
    logs = served["ws"] / ".gptops" / "logs"
    assert "Prefect UI:  http://127.0.0.1:" in terminal and str(logs) in terminal
    for noise in ("___ ___", "Configure Prefect to communicate", "Registry store URI",
                  "GET /api", "StarletteDeprecationWarning"):
        assert noise not in terminal, noise
    assert "prefect" in (logs / "prefect-server.log").read_text().lower()
    assert (logs / "mlflow-server.log").is_file()


def test_mlflow_ui_answers(served):
    with urllib.request.urlopen(served["ui"], timeout=10) as r:
        assert r.status == 200 and b"<html" in r.read().lower()
    with urllib.request.urlopen(f"{served['ui']}/health", timeout=10) as r:
        assert r.read().strip() == b"OK"


def test_retrain_twice_runs_one_at_a_time_and_registers(served):
    from mlflow import MlflowClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def trigger_and_watch():
        with temporary_settings({PREFECT_API_URL: served["api"]}):
            a = await run_deployment("training_pipeline/retrain", timeout=0,
                                     parameters={"overrides": RETRAIN})
            b = await run_deployment("training_pipeline/retrain", timeout=0,
                                     parameters={"overrides": RETRAIN})
        seen = []
        async with prefect(served["api"]) as c:
            deadline = time.time() + 420
            while time.time() < deadline:
                ra, rb = await c.read_flow_run(a.id), await c.read_flow_run(b.id)
                seen.append((ra.state.type.value, ra.state.name, rb.state.type.value,
                             rb.state.name))
                if ra.state.is_final() and rb.state.is_final():
                    break
                await asyncio.sleep(1)
            arts = await c.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[a.id])))
        return ra, rb, seen, arts

    ra, rb, seen, arts = run_async(trigger_and_watch())
    print("\n".join(" ".join(s) for s in dict.fromkeys(seen)))
    assert ra.state.is_completed() and rb.state.is_completed(), (ra.state, rb.state)
    # never two running at once: the later one waits for the slot, then runs after
    assert not any(s[0] == "RUNNING" and s[2] == "RUNNING" for s in seen)
    first, second = sorted((ra, rb), key=lambda r: r.start_time)
    assert second.start_time >= first.end_time
    assert any("AwaitingConcurrencySlot" in (s[1], s[3]) for s in seen), seen

    client = MlflowClient(served["ui"])
    versions = client.search_model_versions("name='gptops-base'")
    by_run = {v.tags.get("prefect_flow_run_id"): v for v in versions}
    assert str(first.id) in by_run  # the first run registers; the second may reuse it
    tags = by_run[str(first.id)].tags
    assert {"data_version", "git_commit", "model_key", "eval_key"} <= set(tags)
    assert client.search_model_versions("name='gptops-package-clf'")

    kinds = {a.key: a for a in arts}
    assert "pipeline-summary" in kinds
    link = kinds["mlflow-base-model"]
    assert f"({served['ui']}/#/models/gptops-base/versions/" in link.data, link.data


def test_sigterm_stops_everything(served):
    """Last in the module: SIGTERM stops serve and all of its children, leaving no orphans."""
    import psutil

    now = psutil.Process(served["proc"].pid).children(recursive=True)
    children = {p.pid: p for p in [*served["children"], *now]}
    assert len(children) >= 3
    t0 = time.time()
    rc = stop_serve(served["proc"])
    assert rc == 0, served["log"].read_text()[-3000:]
    assert time.time() - t0 < 60
    time.sleep(1)
    alive = []
    for p in children.values():
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.cmdline())
        except psutil.NoSuchProcess:
            pass
    assert not alive, alive
    assert "stopped." in served["log"].read_text()
