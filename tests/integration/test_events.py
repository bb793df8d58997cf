"""Events for real: a served workspace whose ``data.source`` is a local folder, a short quiet
period and a notification webhook on 127.0.0.1 (an ``http.server`` thread).

One file dropped into the folder must start a ``retrain-on-data`` run within the quiet period
+ 60 s, which re-reads the source (a new ``data/raw``), registers, and whose gate decision
reaches the webhook as ``{"text": ...}``; a failed run reaches it too. One training run in all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SMALL, make_workspace
from tests.serving import start_serve, stop_serve

pytestmark = [pytest.mark.slow]

QUIET_S = 3
#: The workspace's own values: an event-started run has no overrides, so the small run is its
#: params.yaml (no SFT, no benchmarks, a classifier task from a file: the source is not builtin).
SETTINGS = [*SMALL, "sft.enabled=false", "evaluate.builtin_benchmarks=false",
            "finetune.task=file", f"watch.quiet_period_s={QUIET_S}", "watch.interval_s=1"]
MARKER = "zyzzyvaquux"


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append({"type": self.headers.get("Content-Type"),
                                    "body": json.loads(body or b"null")})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def receiver():
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.received
    server.shutdown()
    server.server_close()


def _paragraphs() -> list[str]:
    """Documents from Python's own help topics (offline, stdlib), a paragraph each."""
    from pydoc_data.topics import topics

    docs = [p.strip() for text in topics.values() for p in text.split("\n\n")]
    return [d for d in docs if len(d) > 200]


def _workspace(tmp_path: Path) -> tuple[Path, Path]:
    from gpt.config import parse_overrides, set_dotted
    from gpt.params_file import round_trip

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with (corpus / "a.jsonl").open("w") as fh:
        for doc in _paragraphs():
            fh.write(json.dumps({"text": doc}) + "\n")
    task = tmp_path / "task.csv"
    task.write_text("text,label\n" + "".join(
        f"{'the parser reads tokens' if i % 2 else 'the server sends bytes'} number {i},"
        f"{'ab'[i % 2]}\n" for i in range(60)))
    ws = make_workspace(tmp_path / "ws")
    rt = round_trip()
    path = ws / "params.yaml"
    raw = rt.load(path.read_text())
    values = {**parse_overrides(SETTINGS), "data.source": str(corpus),
              "finetune.task_path": str(task)}
    for key, value in values.items():
        set_dotted(raw, key, value)
    with path.open("w") as fh:
        rt.dump(raw, fh)
    # The data as a run before this one left it: ingested from a.jsonl alone.
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "ingest"], cwd=ws,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT),
                               "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return ws, corpus


def _ingested(ws: Path) -> str:
    import yaml

    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    return lock["stages"]["ingest"]["outs"][0]["md5"]


def test_a_dropped_file_retrains_and_decisions_and_failures_are_notified(tmp_path, receiver):
    import pandas as pd
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, received = receiver
    ws, corpus = _workspace(tmp_path)
    before = _ingested(ws)
    log = tmp_path / "serve.log"
    proc, api, ui = start_serve(ws, log, extra=("--notify", url))
    try:
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            autos = [a for a in client.read_automations() if a.name.startswith("gptops: notify")]
            assert len(autos) == 1 and "127.0.0.1" in autos[0].name, autos
            assert "/hook" not in autos[0].name  # a webhook's path is its secret

            with (corpus / "b.jsonl").open("w") as fh:
                for i in range(40):
                    fh.write(json.dumps({"text": f"The {MARKER} number {i} is a new document "
                                                 "that arrived after the last run, with words "
                                                 "enough to pass every cleaning rule."}) + "\n")
            dropped = time.time()
            on_data = DeploymentFilter(name=DeploymentFilterName(any_=["retrain-on-data"]))
            deadline = dropped + QUIET_S + 60
            while not (runs := client.read_flow_runs(deployment_filter=on_data)):
                assert time.time() < deadline, "no retrain-on-data run within quiet + 60 s"
                time.sleep(0.5)
            latency = time.time() - dropped
            (run,) = runs
            deadline = time.time() + 900
            while not (run := client.read_flow_run(run.id)).state.is_final():
                assert time.time() < deadline, f"run {run.name} still {run.state.name}"
                time.sleep(2)
            assert run.state.is_completed(), (run.state, log.read_text()[-4000:])
            assert run.name.startswith("data-changed-") and "data-changed" in run.tags
            assert "b.jsonl" in run.parameters["trigger"] and run.parameters["reingest"]

            # The source was read again: a new data/raw holding the new file's documents.
            assert _ingested(ws) != before
            raw = pd.concat(pd.read_parquet(p) for p in sorted((ws / "data/raw").glob("part-*")))
            assert raw["text"].str.contains(MARKER).sum() == 40

            mlflow = MlflowClient(ui)
            versions = mlflow.search_model_versions("name='gptops-base'")
            (mine,) = [v for v in versions if v.tags.get("prefect_flow_run_id") == str(run.id)]
            trigger = mlflow.get_run(mine.run_id).data.tags.get("gptops.trigger", "")
            assert trigger.startswith("data changed: 1 new or changed file (b.jsonl)"), trigger

            # The first base version is the champion: that decision reached the webhook.
            deadline = time.time() + 60
            while not any("gptops-base v" in r["body"]["text"] for r in received):
                assert time.time() < deadline, received
                time.sleep(0.5)
            (note,) = [r for r in received if "gptops-base v" in r["body"]["text"]]
            assert note["type"] == "application/json"
            assert f"gptops-base v{mine.version} promoted to champion" in note["body"]["text"]

            # A run that fails (a bad override) is notified too.
            dep = client.read_deployment_by_name("training_pipeline/retrain")
            bad = client.create_flow_run_from_deployment(
                dep.id, parameters={"overrides": ["train.no_such_key=1"]})
            deadline = time.time() + 120
            while not any(bad.name in r["body"]["text"] for r in received):
                assert time.time() < deadline, received
                time.sleep(0.5)
            failed = [r["body"]["text"] for r in received if bad.name in r["body"]["text"]]
            assert failed and "failed" in failed[0] and "no_such_key" in failed[0], failed

            # An alias moved in the MLflow server (as its UI does): its registry webhook becomes
            # the same event, and the same notification.
            mlflow.set_registered_model_alias("gptops-base", "champion", mine.version)
            deadline = time.time() + 60
            while not any("outside gptops" in r["body"]["text"] for r in received):
                assert time.time() < deadline, (received, log.read_text()[-3000:])
                time.sleep(0.5)
            (moved,) = [r["body"]["text"] for r in received if "outside gptops" in
                        r["body"]["text"]]
            assert moved.startswith(f"gptops: gptops-base v{mine.version} promoted to champion")
        print("\nnotifications received:\n" + "\n".join(r["body"]["text"][:150]
                                                      for r in received))
        print(f"\nfile dropped -> retrain-on-data run created: {latency:.1f}s "
              f"(quiet period {QUIET_S}s)")
    except BaseException:
        print(log.read_text()[-6000:])
        raise
    finally:
        stop_serve(proc)


def test_gptops_run_reingest_reads_a_new_file_and_a_plain_run_says_it_does_not(tmp_path):
    """DVC does not track a local source's files: a plain `gptops run` keeps the data it has
    and says the source changed; `gptops run --reingest` reads the new file."""
    import pandas as pd

    ws, corpus = _workspace(tmp_path)  # ingested from a.jsonl alone
    before = _ingested(ws)
    with (corpus / "b.jsonl").open("w") as fh:
        for i in range(40):
            fh.write(json.dumps({"text": f"The {MARKER} number {i} is a new document that "
                                         "arrived after the last run, with words enough to "
                                         "pass every cleaning rule."}) + "\n")
    gptops = str(Path(sys.executable).parent / "gptops")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    fast = ["--max-steps", "5", "--set", "finetune.max_steps=5"]

    def raw_markers() -> int:
        return int(sum(pd.read_parquet(p)["text"].str.contains(MARKER).sum()
                       for p in (ws / "data/raw").glob("part-*")))

    def run(*extra: str) -> str:
        done = subprocess.run([gptops, "run", "-w", str(ws), *fast, *extra], cwd=ws, env=env,
                              capture_output=True, text=True, timeout=900)
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-4000:]
        return out

    out = run()
    assert _ingested(ws) == before and raw_markers() == 0
    assert ("data.source changed since the last ingest (1 new or changed file (b.jsonl)); "
            "--reingest reads it") in " ".join(out.split()), out[-4000:]
    out = run("--reingest")
    assert _ingested(ws) != before and raw_markers() == 40
    assert "--reingest reads it" not in out
