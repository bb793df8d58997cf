"""``gptops serve``: Prefect server, deployment runner and MLflow server, supervised together.

All three bind 127.0.0.1 by default and start together (the runner waits for the Prefect API;
serve says it is up once all three are), and stop together on Ctrl-C/SIGTERM or when any of them
dies. A port in use is refused up front. Beside them (:mod:`flows.watch`): the notification
automations for ``--notify`` and ``notify.webhooks``, and the watcher of ``data.source``
(``watch:``), whose event runs the deployment ``retrain-on-data``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from flows.deploy import NIGHTLY_CRON, NIGHTLY_TIMEZONE
from flows.links import MLFLOW_UI_ENV
from flows.server import (
    database_url,
    mark_blocks,
    new_database,
    port_free,
    prefect_env,
    release_orphan_slots,
    skip_known_blocks,
    skip_known_schema,
    stop_group,
    wait_http,
    workspace,
    write_serve_file,
)
from gpt.errors import GptopsError
from gpt.registry import resolve_tracking_uri

DEPLOYMENTS = ("nightly", "retrain", "retrain-on-data")


def wait_deployments(api: str, proc: subprocess.Popen, names: tuple[str, ...],
                     timeout: float = 120.0) -> None:
    """Wait until the runner ``proc`` has registered (and un-paused) the deployments ``names``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise GptopsError(f"the deployment runner exited with status {proc.returncode} "
                              "while starting; see the log above")
        req = urllib.request.Request(f"{api}/deployments/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - local URL
                live = {d["name"] for d in json.load(r) if not d.get("paused")}
            if set(names) <= live:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise GptopsError(f"deployments {', '.join(names)} were not served within {timeout:.0f}s")


class Services:
    """The processes of one ``gptops serve``, each in its own process group (Ctrl-C reaches only
    us, and stopping a child stops its own children: MLflow's uvicorn, the runner's flow-run
    processes), stopped together in reverse order of start."""

    def __init__(self, ws: Path, env: dict[str, str], logs: Path) -> None:
        self.ws, self.env, self.logs = ws, env, logs
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], quiet: bool = False) -> subprocess.Popen:
        """Start ``cmd``. ``quiet``: a server's own output (its banner, deprecation warnings,
        every HTTP request) goes to ``.gptops/logs/<name>.log``; the terminal keeps the
        addresses and the runs' own lines."""
        out = (self.logs / f"{name}.log").open("ab") if quiet else None
        try:
            proc = subprocess.Popen(cmd, env=self.env, cwd=self.ws, start_new_session=True,
                                    stdout=out, stderr=subprocess.STDOUT if quiet else None)
        finally:
            if out is not None:
                out.close()
        self.procs.append((name, proc))
        return proc

    def wait_up(self, name: str, proc: subprocess.Popen, health: str, what: str) -> None:
        """Wait until the server ``proc`` answers at ``health`` (its log named if not)."""
        try:
            wait_http(health, proc, what)
        except GptopsError as exc:
            raise GptopsError(f"{exc} (its log: {self.logs / f'{name}.log'})") from None

    def supervise(self) -> None:
        """Block while every process lives; one dying is an error that stops the rest."""
        while all(p.poll() is None for _n, p in self.procs):
            time.sleep(1)
        dead = [n for n, p in self.procs if p.poll() is not None]
        raise GptopsError(f"{', '.join(dead)} stopped unexpectedly; shutting down the rest")

    def stop(self) -> None:
        """Runner first (it pauses its deployments through the API), the Prefect server last."""
        for _name, p in reversed(self.procs):
            stop_group(p)


def _check_inputs(host: str, ports: dict[str, int], notify: tuple[str, ...]) -> None:
    """Refuse a bad ``--notify`` URL or a port in use before anything starts."""
    for url in notify:
        if not url.startswith(("http://", "https://")):
            raise GptopsError(f"--notify {url!r} is not an http(s):// URL; give the webhook's "
                              "address, e.g. https://hooks.slack.com/services/...")
    for name, port in ports.items():
        if not port_free(host, port):
            raise GptopsError(f"{host}:{port} ({name}) is already in use; stop what uses it or "
                              f"pass --{name.lower()}-port")


def _create_notifications(ws: Path, env: dict[str, str], notify: tuple[str, ...]) -> None:
    """The notification automations, on the Prefect server (they outlive a crash of serve)."""
    done = subprocess.run([sys.executable, "-m", "flows.watch", "notify", "--workdir", str(ws),
                           *(a for u in notify for a in ("--url", u))],
                          env=env, cwd=ws, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise GptopsError("could not create the notification automations: "
                          f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")


def _mlflow_env(backend: str, mlflow_ui: str, webhooks: bool) -> dict[str, str]:
    """What the MLflow server and the runs under serve are told."""
    env = {"MLFLOW_TRACKING_URI": backend, MLFLOW_UI_ENV: mlflow_ui,
           # The job runner (online scoring, trace archival) is worker processes we don't use.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION":
               os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    if webhooks:  # its deliveries go to our receiver on 127.0.0.1
        env.update({"MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "https,http"})
    return env


def _start_servers(services: Services, host: str, prefect_port: int, mlflow_port: int,
                   backend: str, own_db: bool, runner: list[str]) -> subprocess.Popen:
    """The Prefect server, the MLflow server and the deployment runner, started together (each
    boots for seconds, mostly imports; the runner waits for the Prefect API itself); returns
    when both servers answer. The runner's process is returned."""
    api = f"http://{host}:{prefect_port}/api"
    prefect = services.start("prefect-server", [
        str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", host,
        "--port", str(prefect_port), "--analytics-off"], quiet=True)
    mlflow = services.start("mlflow-server", [
        sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(mlflow_port),
        "--backend-store-uri", backend, "--workers", "1"], quiet=True)
    runs = services.start("runner", runner)
    services.wait_up("prefect-server", prefect, f"{api}/health", "Prefect server")
    if own_db:  # the workspace's own database: no slot can be held by a live run
        freed = release_orphan_slots(api)
        if freed:
            print(f"released {len(freed)} concurrency slot(s) held by runs of a server that "
                  f"died ({', '.join(freed)})", flush=True)
    services.wait_up("mlflow-server", mlflow, f"http://{host}:{mlflow_port}/health",
                     "MLflow server")
    return runs


def _start_events(services: Services, params: Any, mlflow_ui: str) -> bool:
    """The events process (:mod:`flows.watch`): the data watcher and the MLflow webhook
    receiver, as params ask. Whether ``data.source`` is watched."""
    from gpt.data.watch import SourceWatch, remote, watchable

    watching = params.watch.enabled and watchable(params.data.source)
    if watching and not remote(params.data.source):  # what "unchanged" is, before
        # anyone is told serve is up (a hub's revision: the watcher asks, saying why not)
        SourceWatch.open(services.ws, params.data.source, params.watch.quiet_period_s,
                         time.monotonic())
    hooks = params.notify.mlflow_webhooks
    if watching or hooks:
        services.start("events", [sys.executable, "-m", "flows.watch", "run", "--workdir",
                                  str(services.ws), *(("--mlflow", mlflow_ui) if hooks else ())])
    return watching


def serve_all(workdir: Path, host: str, prefect_port: int, mlflow_port: int, prefect_db: str,
              mlflow_backend: str, cron: str = NIGHTLY_CRON,
              timezone: str = NIGHTLY_TIMEZONE, init: bool = False,
              notify: tuple[str, ...] = ()) -> None:
    from gpt.config import load_params
    from gpt.dvc_repo import ensure_workspace

    _check_inputs(host, {"Prefect": prefect_port, "MLflow": mlflow_port}, notify)
    ws = ensure_workspace(Path(workdir), init)
    layout = workspace(ws)
    params = load_params(layout.params_yaml)
    backend = mlflow_backend or resolve_tracking_uri(params.registry.tracking_uri, ws)
    mlflow_ui = f"http://{host}:{mlflow_port}"
    env = prefect_env(host, prefect_port, prefect_db or database_url(ws), layout.prefect_home)
    env.update(_mlflow_env(backend, mlflow_ui, params.notify.mlflow_webhooks))
    logs = layout.logs
    logs.mkdir(exist_ok=True)
    services = Services(ws, env, logs)
    if not prefect_db:  # a new workspace's database: a copy of the environment's blank one
        new_database(layout.prefect_db, Path(env["PREFECT_HOME"]))
        skip_known_blocks(env, Path(env["PREFECT_HOME"]))
        skip_known_schema(env, layout.prefect_db)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        runner = _start_servers(services, host, prefect_port, mlflow_port, backend,
                                own_db=not prefect_db, runner=[
                                    sys.executable, "-m", "flows.deploy", "--workdir", str(ws),
                                    "--cron", cron, "--timezone", timezone])
        if not prefect_db:
            mark_blocks(Path(env["PREFECT_HOME"]))
        wait_deployments(f"http://{host}:{prefect_port}/api", runner, DEPLOYMENTS)
        urls = [*params.notify.webhooks, *notify]
        if urls:
            _create_notifications(ws, env, notify)
        watching = _start_events(services, params, mlflow_ui)
        if not prefect_db:  # `gptops run` on this workspace records its runs here too
            write_serve_file(ws, env["PREFECT_API_URL"], mlflow_ui)
        print(f"\nPrefect UI:  http://{host}:{prefect_port}   (deployments: "
              f"training_pipeline/nightly [{cron} {timezone}], training_pipeline/retrain, "
              "training_pipeline/retrain-on-data)")
        print("Data watch:  " + (f"{params.data.source} (quiet period "
                                 f"{params.watch.quiet_period_s:g}s)" if watching else
                                 "off (watch.enabled, or a builtin data.source)"))
        if urls:
            print(f"Notify:      {len(urls)} webhook(s): gate decisions and failed runs")
        print(f"MLflow UI:   {mlflow_ui}   (backend {backend})\n"
              f"Server logs: {logs}/prefect-server.log, {logs}/mlflow-server.log\n"
              "Press Ctrl-C to stop.\n", flush=True)
        services.supervise()
    except KeyboardInterrupt:
        print("stopping…", flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the shutdown
            signal.signal(sig, signal.SIG_IGN)
        layout.serve_file.unlink(missing_ok=True)
        services.stop()
        print("stopped.", flush=True)
