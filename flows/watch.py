"""What ``gptops serve`` runs beside its servers for events (``python -m flows.watch``).

- ``notify``: (re)create the notification automations (:func:`flows.events.install_notifications`)
  for ``notify.webhooks`` of params.yaml and the ``--url`` options, then exit.
- ``run``: until stopped,

  - poll ``data.source`` (its files every ``watch.interval_s``; an ``hf:`` hub dataset's
    revision every ``watch.remote_interval_s``) and emit ``gptops.data.changed`` once it was
    left alone for ``watch.quiet_period_s`` (:class:`gpt.data.watch.SourceWatch`); the
    deployment ``retrain-on-data`` runs on it;
  - with ``--mlflow URL`` (``notify.mlflow_webhooks``): register an MLflow registry webhook
    (signed with a secret made at each start) pointing at a receiver on 127.0.0.1, which turns
    versions registered and aliases moved through the MLflow server (its UI, its REST API: not
    gptops, whose runs write to the store directly) into the same Prefect events.

Both talk to the Prefect server that ``PREFECT_API_URL`` names (``gptops serve`` sets it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from flows.events import DATA_CHANGED, install_notifications, mlflow_event
from gpt.cli import setup_logging
from gpt.config import load_params
from gpt.data.watch import Change, SourceWatch, remote, watchable

#: The MLflow webhook of a ``gptops serve`` (replaced at each start: its port and secret change).
MLFLOW_HOOK = "gptops-serve"
MLFLOW_EVENTS = ("model_version.created", "model_version_alias.created")


def data_changed(workdir: Path, source: str, change: Change) -> None:
    """Emit ``gptops.data.changed`` for ``workdir`` (its resource names the workspace)."""
    from prefect.events import emit_event

    ws = str(Path(workdir).resolve())
    emit_event(DATA_CHANGED, {"prefect.resource.id": f"gptops.workspace.{ws}",
                              "prefect.resource.name": ws},
               payload={"workdir": ws, "source": source, "files": change.files,
                        "removed": change.removed, "revision": change.revision,
                        "summary": change.summary,
                        "text": f"gptops: data changed in {ws}: {change.summary}"})


def watch(workdir: Path, source: str, interval_s: float, quiet_s: float) -> None:
    """Poll ``source`` until stopped, emitting an event per quiet change."""
    state = SourceWatch.open(Path(workdir), source, quiet_s, time.monotonic())
    what = (f"its hub revision every {interval_s:g}s" if remote(source)
            else f"{len(state.seen)} file(s)")
    print(f"watching data.source {source} ({what}; a change runs retrain-on-data after "
          f"{quiet_s:g}s of quiet)", flush=True)
    while True:
        time.sleep(interval_s)
        change = state.poll(time.monotonic())
        if change is not None:
            data_changed(Path(workdir), source, change)
            print(f"data changed: {change.summary}; {DATA_CHANGED} sent (retrain-on-data)",
                  flush=True)


def signed(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """True when an MLflow delivery carries the HMAC-SHA256 signature of ``secret``."""
    delivery, stamp = headers.get("X-MLflow-Delivery-Id", ""), headers.get("X-MLflow-Timestamp", "")
    digest = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body,
                      hashlib.sha256).digest()
    expected = f"v1,{base64.b64encode(digest).decode()}"
    return hmac.compare_digest(expected, headers.get("X-MLflow-Signature", ""))


def mlflow_receiver(mlflow_ui: str, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the receiver of MLflow registry webhooks (a thread) and register its webhook on
    the MLflow server at ``mlflow_ui`` (replacing the one of an earlier start)."""
    from mlflow import MlflowClient
    from prefect.events import emit_event

    secret = secrets.token_hex(16)

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not signed(secret, dict(self.headers), body):
                self.send_response(401)
                self.end_headers()
                return
            try:
                found = mlflow_event(json.loads(body))
            except ValueError:
                found = None
            if found is not None:
                event, resource, payload = found
                emit_event(event, resource, payload=payload)
                print(f"MLflow registry: {payload['text']} ({event} sent)", flush=True)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True, name="mlflow-hooks").start()
    client = MlflowClient(tracking_uri=mlflow_ui, registry_uri=mlflow_ui)
    for old in client.list_webhooks():
        if old.name == MLFLOW_HOOK:
            client.delete_webhook(old.webhook_id)
    client.create_webhook(MLFLOW_HOOK, f"http://{host}:{server.server_address[1]}/mlflow",
                          list(MLFLOW_EVENTS), secret=secret,
                          description="gptops serve: versions and aliases set outside gptops "
                                      "become Prefect events")
    print(f"MLflow registry webhooks -> http://{host}:{server.server_address[1]}/mlflow",
          flush=True)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="gptops serve's event helpers")
    parser.add_argument("command", choices=["notify", "run"])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--url", action="append", default=[], help="a webhook (repeatable)")
    parser.add_argument("--mlflow", default="", help="the MLflow server: receive its webhooks")
    args = parser.parse_args()
    ws = Path(args.workdir).resolve()
    params = load_params(ws / "params.yaml")
    if args.command == "notify":
        for name in install_notifications([*params.notify.webhooks, *args.url]):
            print(f"notifications: {name}", flush=True)
        return
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    setup_logging()  # the watcher's warnings (a hub that does not answer) on the terminal
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: gptops serve stops us too
        if args.mlflow:
            try:
                mlflow_receiver(args.mlflow)
            except Exception as exc:  # noqa: BLE001 - e.g. a store without webhooks: say so, go on
                print(f"MLflow registry webhooks unavailable ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''}); notify.mlflow_webhooks "
                      "does nothing here", flush=True)
        source, w = params.data.source, params.watch
        if w.enabled and watchable(source):
            watch(ws, source, w.remote_interval_s if remote(source) else w.interval_s,
                  w.quiet_period_s)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
