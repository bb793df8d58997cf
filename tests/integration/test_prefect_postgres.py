"""The team setup on PostgreSQL (127.0.0.1:5432): a Prefect server and an MLflow server with
proxied artifacts, each on a fresh database (``postgres_db`` in tests/conftest.py).
Missing PostgreSQL is a failure, not a skip."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.serving import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BIN = Path(sys.executable).parent


def clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    return env


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - local URL
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{url} did not answer in {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_prefect_server_on_postgres_records_a_flow_run(postgres_db, tmp_path):
    import psycopg

    port = free_port()
    env = clean_env(tmp_path)
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres_db.url("asyncpg")
    log = tmp_path / "prefect.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--analytics-off"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        api = f"http://127.0.0.1:{port}/api"
        wait_http(f"{api}/health", proc, log)
        run_name = f"pg-{uuid.uuid4().hex[:6]}"
        flow_src = (
            "from prefect import flow\n"
            "@flow(name='gptops-pg-smoke')\n"
            "def smoke(x: int) -> int:\n"
            "    return x + 1\n"
            f"assert smoke.with_options(flow_run_name='{run_name}')(41) == 42\n")
        client_env = {**clean_env(tmp_path), "PREFECT_API_URL": api}
        r = subprocess.run([sys.executable, "-c", flow_src], env=client_env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        with psycopg.connect(postgres_db.conninfo) as conn:
            rows = conn.execute(
                "SELECT fr.name, fr.state_type, f.name FROM flow_run fr "
                "JOIN flow f ON f.id = fr.flow_id WHERE fr.name = %s", (run_name,)).fetchall()
        assert [(n, str(s), f) for n, s, f in rows] == [(run_name, "COMPLETED",
                                                         "gptops-pg-smoke")]
    finally:
        stop(proc)


def test_mlflow_server_on_postgres_with_proxied_artifacts(postgres_db, tmp_path):
    import psycopg
    from mlflow import MlflowClient

    port = free_port()
    dest = tmp_path / "artifacts"
    dest.mkdir()
    log = tmp_path / "mlflow.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1",
             "--backend-store-uri", postgres_db.url("psycopg"),
             "--serve-artifacts", "--artifacts-destination", str(dest)],
            env=clean_env(tmp_path), stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log)
        client = MlflowClient(url)
        exp = client.create_experiment("gptops-pg")
        run = client.create_run(exp, run_name="proxied")
        client.log_metric(run.info.run_id, "val_loss", 1.25)
        src = tmp_path / "report.md"
        src.write_text("# gptops on postgres\n")
        client.log_artifact(run.info.run_id, str(src), artifact_path="reports")
        client.set_terminated(run.info.run_id)

        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        landed = list(dest.rglob("report.md"))
        assert len(landed) == 1 and landed[0].read_text() == "# gptops on postgres\n"
        assert run.info.run_id in landed[0].as_posix()
        assert [f.path for f in client.list_artifacts(run.info.run_id, "reports")] == [
            "reports/report.md"]
        with psycopg.connect(postgres_db.conninfo) as conn:
            (status,) = conn.execute("SELECT status FROM runs WHERE run_uuid = %s",
                                     (run.info.run_id,)).fetchone()
            (value,) = conn.execute("SELECT value FROM latest_metrics WHERE run_uuid = %s AND "
                                    "key = 'val_loss'", (run.info.run_id,)).fetchone()
        assert status == "FINISHED" and value == 1.25
    finally:
        stop(proc)
