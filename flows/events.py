"""gptops's own Prefect events, and the automations ``gptops serve`` makes of them.

- ``gptops.model.promoted`` / ``.challenger`` / ``.rejected`` (resource ``gptops.model.<name>``):
  each gate decision of a run (``flows.pipeline``, ``flows.tune``), and an alias moved outside
  gptops (MLflow registry webhooks, :mod:`flows.watch`);
- ``gptops.model.registered``: a version registered outside gptops (MLflow registry webhooks);
- ``gptops.run.failed`` (``gptops.run.<flow run id>``): a pipeline run failed or crashed (hooks);
- ``gptops.data.changed`` (``gptops.workspace.<workspace>``): the files of ``data.source``
  changed (the watcher of ``gptops serve``, :mod:`flows.watch`).

Each payload holds a ``text`` line, what a notification says. The library decides (``gpt.registry.
gate``); this module only tells Prefect what was decided.

``notify_automation`` is one Prefect automation per webhook URL: on any of :data:`NOTIFIED`, the
server POSTs ``{"text": <the event's text>}`` (what Slack and Teams incoming webhooks take) through
a ``Webhook`` block. ``install_notifications`` (re)creates them at each ``gptops serve``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.automations import AutomationCore

log = logging.getLogger(__name__)

PROMOTED = "gptops.model.promoted"
CHALLENGER = "gptops.model.challenger"
REJECTED = "gptops.model.rejected"
#: A version registered outside gptops (in the MLflow UI or API): no gate decided it.
REGISTERED = "gptops.model.registered"
RUN_FAILED = "gptops.run.failed"
DATA_CHANGED = "gptops.data.changed"
#: The events a notification webhook gets.
NOTIFIED = (PROMOTED, CHALLENGER, REJECTED, REGISTERED, RUN_FAILED)
#: The automations of ``gptops serve --notify`` are named with this prefix (replaced at each start).
NOTIFY_PREFIX = "gptops: notify "
#: The webhook's body: Slack/Teams-compatible JSON, rendered by the Prefect server.
NOTIFY_PAYLOAD = '{"text": {{ event.payload.text | tojson }}}'


def decision_event(kind: str, reg: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(event, resource, payload) of one registration's gate decision (``Registration`` as a
    dict). A reused version was decided by an earlier run: callers skip those."""
    name, version = str(reg["name"]), str(reg["version"])
    if reg.get("champion"):
        event, what = PROMOTED, "promoted to champion"
    elif reg.get("rejected"):
        event, what = REJECTED, "rejected (no alias)"
    else:
        event, what = CHALLENGER, "challenger"
    champion = version if reg.get("champion") else reg.get("previous_champion")
    metric, value = reg.get("metric") or "", reg.get("value")
    shown = f"{metric} {value:.4g}" if metric and isinstance(value, (int, float)) else metric
    payload = {"model": name, "version": version, "kind": kind, "metric": metric, "value": value,
               "champion": champion, "previous_champion": reg.get("previous_champion"),
               "reason": reg.get("reason", ""),
               "text": f"gptops: {name} v{version} {what}"
                       f"{f' ({shown})' if shown else ''}: {reg.get('reason', '')}"}
    ui = os.environ.get("GPTOPS_MLFLOW_UI", "")
    if ui:
        payload["url"] = f"{ui.rstrip('/')}/#/models/{name}/versions/{version}"
    resource = {"prefect.resource.id": f"gptops.model.{name}", "prefect.resource.name": name,
                "gptops.model.version": version}
    return event, resource, payload


def mlflow_event(message: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]] | None:
    """(event, resource, payload) of an MLflow registry webhook delivery (its JSON body), for a
    version registered or an alias moved outside gptops; None for what gptops does not tell."""
    from gpt.registry import governance

    entity, action, data = message.get("entity"), message.get("action"), message.get("data")
    if action != "created" or not isinstance(data, dict) or not data.get("name"):
        return None
    name, version = str(data["name"]), str(data.get("version", ""))
    if entity == "model_version":
        event, what = REGISTERED, "registered"
    elif entity == "model_version_alias" and data.get("alias") == governance.CHAMPION:
        event, what = PROMOTED, "promoted to champion"
    elif entity == "model_version_alias" and data.get("alias") == governance.CHALLENGER:
        event, what = CHALLENGER, "challenger"
    else:
        return None
    payload = {"model": name, "version": version, "source": "mlflow",
               "champion": version if event == PROMOTED else None,
               "alias": data.get("alias"), "run_id": data.get("run_id"),
               "text": f"gptops: {name} v{version} {what} outside gptops (MLflow registry)"}
    resource = {"prefect.resource.id": f"gptops.model.{name}", "prefect.resource.name": name,
                "gptops.model.version": version}
    return event, resource, payload


def emit_decisions(registered: dict[str, dict[str, Any]]) -> list[str]:
    """Emit the gate decision of each registration made now (``{kind: Registration as dict}``);
    the events sent are returned."""
    from prefect.events import emit_event

    sent = []
    for kind, reg in registered.items():
        if not reg or reg.get("reused") or not reg.get("version"):
            continue
        event, resource, payload = decision_event(kind, reg)
        emit_event(event, resource, payload=payload)
        sent.append(event)
    return sent


def run_failed(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (``on_failure``, ``on_crashed``): emit ``gptops.run.failed`` for this run."""
    from prefect.events import emit_event

    workdir = str((flow_run.parameters or {}).get("workdir", ""))
    message = (state.message or state.name or "").strip().splitlines()
    payload = {"flow": flow.name, "flow_run": flow_run.name, "flow_run_id": str(flow_run.id),
               "state": state.name, "message": message[0] if message else "",
               "workdir": workdir,
               "text": f"gptops: run {flow_run.name} ({flow.name}) {state.name.lower()}: "
                       f"{message[0] if message else ''}"}
    ui = os.environ.get("PREFECT_UI_URL", "") or os.environ.get("PREFECT_API_URL", "")
    if ui:
        payload["url"] = f"{ui.rstrip('/').removesuffix('/api')}/runs/flow-run/{flow_run.id}"
    emit_event(RUN_FAILED, {"prefect.resource.id": f"gptops.run.{flow_run.id}",
                            "prefect.resource.name": flow_run.name},
               related=[{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                         "prefect.resource.role": "flow-run",
                         "prefect.resource.name": flow_run.name}],
               payload=payload)


def notify_automation(url: str, block_id: UUID) -> AutomationCore:
    """The automation that POSTs each of :data:`NOTIFIED` to ``url`` (its Webhook block)."""
    from prefect.automations import AutomationCore, CallWebhook, EventTrigger

    return AutomationCore(
        name=f"{NOTIFY_PREFIX}{_label(url)}",
        description="Gate decisions and failed runs, as {\"text\": ...} (Slack/Teams), to a "
                    "webhook (gptops serve --notify / params.yaml notify.webhooks).",
        trigger=EventTrigger(expect=set(NOTIFIED), match={"prefect.resource.id": "gptops.*"},
                             posture="Reactive", threshold=1),
        actions=[CallWebhook(block_document_id=block_id, payload=NOTIFY_PAYLOAD)])


def _label(url: str) -> str:
    """The URL without its path (a Slack webhook's path is its secret), and a short hash."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc} (#{hashlib.sha256(url.encode()).hexdigest()[:8]})"


def install_notifications(urls: list[str]) -> list[str]:
    """Replace the notification automations on the current Prefect server by one per URL
    (each with its ``Webhook`` block); their names are returned."""
    from prefect.blocks.webhook import Webhook
    from prefect.client.orchestration import get_client

    names = []
    with get_client(sync_client=True) as client:
        for old in client.read_automations():
            if old.name.startswith(NOTIFY_PREFIX):
                client.delete_automation(old.id)
        for url in dict.fromkeys(urls):
            block = Webhook(method="POST", url=url,
                            headers={"Content-Type": "application/json"})
            slug = f"gptops-notify-{hashlib.sha256(url.encode()).hexdigest()[:12]}"
            block_id = block.save(slug, overwrite=True)
            auto = notify_automation(url, block_id)
            client.create_automation(auto)
            names.append(auto.name)
    return names
