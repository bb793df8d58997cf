"""What ``gptops serve`` runs beside its servers for events (``python -m flows.watch``).

- ``notify``: (re)create the notification automations (:func:`flows.events.install_notifications`)
  for ``notify.webhooks`` of params.yaml and the ``--url`` options, then exit.
- ``watch``: poll the files of ``data.source`` every ``watch.interval_s`` and emit
  ``gptops.data.changed`` once they were left alone for ``watch.quiet_period_s``
  (:class:`gpt.data.watch.SourceWatch`); the deployment ``retrain-on-data`` runs on it.

Both talk to the Prefect server that ``PREFECT_API_URL`` names (``gptops serve`` sets it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

from flows.events import DATA_CHANGED, install_notifications
from gpt.config import load_params
from gpt.data.watch import Change, SourceWatch


def data_changed(workdir: Path, source: str, change: Change) -> None:
    """Emit ``gptops.data.changed`` for ``workdir`` (its resource names the workspace)."""
    from prefect.events import emit_event

    ws = str(Path(workdir).resolve())
    emit_event(DATA_CHANGED, {"prefect.resource.id": f"gptops.workspace.{ws}",
                              "prefect.resource.name": ws},
               payload={"workdir": ws, "source": source, "files": change.files,
                        "removed": change.removed, "summary": change.summary,
                        "text": f"gptops: data changed in {ws}: {change.summary}"})


def watch(workdir: Path) -> None:
    """Poll ``data.source`` until stopped, emitting an event per quiet change."""
    params = load_params(Path(workdir) / "params.yaml")
    source, w = params.data.source, params.watch
    state = SourceWatch.open(Path(workdir), source, w.quiet_period_s, time.monotonic())
    print(f"watching data.source {source} ({len(state.seen)} file(s); a change runs "
          f"retrain-on-data after {w.quiet_period_s:g}s of quiet)", flush=True)
    while True:
        time.sleep(w.interval_s)
        change = state.poll(time.monotonic())
        if change is not None:
            data_changed(Path(workdir), source, change)
            print(f"data changed: {change.summary}; {DATA_CHANGED} sent (retrain-on-data)",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="gptops serve's event helpers")
    parser.add_argument("command", choices=["notify", "watch"])
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--url", action="append", default=[], help="a webhook (repeatable)")
    args = parser.parse_args()
    ws = Path(args.workdir).resolve()
    if args.command == "notify":
        urls = [*load_params(ws / "params.yaml").notify.webhooks, *args.url]
        for name in install_notifications(urls):
            print(f"notifications: {name}", flush=True)
        return
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: gptops serve stops us too
        watch(ws)


if __name__ == "__main__":
    main()

