"""``gptops serve``: Prefect server, deployment runner and MLflow server, supervised together.

All three bind 127.0.0.1 by default, start in order (each waits for the previous to answer), and
stop together on Ctrl-C/SIGTERM or when any of them dies. A port in use is refused up front.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gpt.errors import GptopsError
from gpt.registry import resolve_tracking_uri


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise GptopsError(f"{what} exited with status {proc.returncode} while starting; "
                              "see the log above")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - local URL
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise GptopsError(f"{what} did not answer at {url} within {timeout:.0f}s")


def prefect_env(host: str, port: int, db_url: str, home: Path) -> dict[str, str]:
    """Environment for a Prefect server and its clients on ``host:port``."""
    env = dict(os.environ)
    api = f"http://{host}:{port}/api"
    env.update({"PREFECT_API_URL": api, "PREFECT_UI_API_URL": api,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(home),
                "PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port),
                "PREFECT_API_DATABASE_CONNECTION_URL": db_url,
                "PREFECT_LOGGING_EXTRA_LOGGERS": "gpt"})
    return env


def serve_all(workdir: Path, host: str, prefect_port: int, mlflow_port: int, prefect_db: str,
              mlflow_backend: str, cron: str, timezone: str) -> None:
    from gpt.config import load_params
    from gpt.workspace import ensure_workspace

    ws = ensure_workspace(Path(workdir))
    for name, port in (("Prefect", prefect_port), ("MLflow", mlflow_port)):
        if not port_free(host, port):
            raise GptopsError(f"{host}:{port} ({name}) is already in use; stop what uses it or "
                              f"pass --{name.lower()}-port")
    state = ws / ".gptops"
    state.mkdir(exist_ok=True)
    db = prefect_db or f"sqlite+aiosqlite:///{state / 'prefect.db'}"
    params = load_params(ws / "params.yaml")
    backend = mlflow_backend or resolve_tracking_uri(params.registry.tracking_uri, ws)
    env = prefect_env(host, prefect_port, db, state / "prefect-home")
    mlflow_ui = f"http://{host}:{mlflow_port}"
    env.update({"MLFLOW_TRACKING_URI": backend, "GPTOPS_MLFLOW_UI": mlflow_ui})
    procs: list[tuple[str, subprocess.Popen]] = []

    def stop(*_: object) -> None:
        for _name, p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for _name, p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    bin_dir = Path(sys.executable).parent
    try:
        procs.append(("prefect", subprocess.Popen(
            [str(bin_dir / "prefect"), "server", "start", "--host", host, "--port",
             str(prefect_port), "--analytics-off"],
            env=env, cwd=ws)))
        wait_http(f"http://{host}:{prefect_port}/api/health", procs[-1][1], "Prefect server")
        procs.append(("mlflow", subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(mlflow_port),
             "--backend-store-uri", backend, "--workers", "1"], env=env, cwd=ws)))
        wait_http(f"{mlflow_ui}/health", procs[-1][1], "MLflow server")
        procs.append(("runner", subprocess.Popen(
            [sys.executable, "-m", "flows.deploy", "--workdir", str(ws), "--cron", cron,
             "--timezone", timezone], env=env, cwd=ws)))
        print(f"\nPrefect UI:  http://{host}:{prefect_port}   (deployments: "
              f"training_pipeline/nightly [{cron} {timezone}], training_pipeline/retrain)")
        print(f"MLflow UI:   {mlflow_ui}   (backend {backend})")
        print("Press Ctrl-C to stop.\n", flush=True)
        while all(p.poll() is None for _n, p in procs):
            time.sleep(1)
        dead = [n for n, p in procs if p.poll() is not None]
        raise GptopsError(f"{', '.join(dead)} stopped unexpectedly; shutting down the rest")
    except KeyboardInterrupt:
        print("stopping…", flush=True)
    finally:
        stop()
