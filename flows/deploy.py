"""Deployments of ``training_pipeline``: ``nightly`` (cron), ``retrain`` (Run button) and
``retrain-on-data`` (the event ``gptops.data.changed``, :mod:`flows.watch`).

``python -m flows.deploy`` serves the three from this process (what ``gptops serve`` starts);
``prefect.yaml`` declares the same three for ``prefect deploy`` to a work pool.

Each deployment carries a trigger (a Prefect automation the server runs, re-created with the
deployment): when one of its runs crashes (its process was killed), the deployment runs again with
the crashed run's parameters, so training resumes from the run's checkpoints. A flow-run event
cannot say "not started by this automation" (events carry no parameters, and related-resource
filters can only require a resource), so the guard against a loop is the trigger's window: it
fires once, then ignores the deployment's crashes for ``RERUN_WINDOW``. A re-run that crashes
within it (a crash that repeats) is left to the user.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flows.form import FLOW_NAME

if TYPE_CHECKING:
    from prefect.events import DeploymentEventTrigger

#: The nightly schedule's one home: ``gptops serve`` and ``python -m flows.deploy`` default to
#: these; prefect.yaml (static, for ``prefect deploy``) must state the same, which
#: tests/integration/test_infra.py checks against ``build_deployments``.
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "UTC"
#: What a second trigger does while a run is in progress (ENQUEUE: it waits; CANCEL_NEW).
DEFAULT_COLLISION = "ENQUEUE"
#: After a crashed run is re-run, further crashes of the deployment are not re-run for this long.
RERUN_WINDOW = timedelta(hours=24)
#: The re-run's parameters: all of the crashed run's, as they were (rendered by the server).
RERUN_PARAMETERS: dict[str, Any] = {
    "__prefect_kind": "json",
    "value": {"__prefect_kind": "jinja", "template": "{{ flow_run.parameters | tojson }}"}}
#: The deployment that the watcher's event runs. Its runs re-read the source (``reingest``: DVC
#: does not track local source files) and are told why they started (their name, an MLflow tag).
ON_DATA = "retrain-on-data"
ON_DATA_PARAMETERS: dict[str, Any] = {
    "trigger": {"__prefect_kind": "jinja", "template": "data changed: {{ event.payload.summary }}"}}


def retrain_on_data() -> DeploymentEventTrigger:
    """The trigger of ``retrain-on-data``: each ``gptops.data.changed`` runs it once. The watcher
    sends the event only after the files were left alone for ``watch.quiet_period_s``, so a copy
    of many files is one event; the deployment's limit queues a run behind a running one.

    prefect.yaml states the same under ``retrain-on-data``'s ``triggers:``.
    """
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"{FLOW_NAME}/{ON_DATA}: data changed",
        description="The files of data.source changed (gptops serve's watcher, after its quiet "
                    "period): retrain on them.",
        expect={"gptops.data.changed"}, match={"prefect.resource.id": "gptops.workspace.*"},
        posture="Reactive", threshold=1, parameters=ON_DATA_PARAMETERS)


def deployment_triggers(deployment: str, flow: str = FLOW_NAME) -> list[DeploymentEventTrigger]:
    """Every trigger of ``deployment``: the crash re-run, and for retrain-on-data its event."""
    own = [retrain_on_data()] if deployment == ON_DATA else []
    return [*own, rerun_on_crash(deployment, flow)]


def rerun_on_crash(deployment: str, flow: str = FLOW_NAME) -> DeploymentEventTrigger:
    """The trigger that runs deployment ``flow/deployment`` again when one of its runs crashes.

    prefect.yaml states the same under each deployment's ``triggers:``.
    """
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name=f"{flow}/{deployment}: re-run a crashed run",
        description="A crashed run runs again with its own parameters (it resumes from its "
                    "checkpoints); the deployment's crashes in the next "
                    f"{RERUN_WINDOW.total_seconds() / 3600:g} h are not re-run.",
        expect={"prefect.flow-run.Crashed"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related=[{"prefect.resource.role": "flow", "prefect.resource.name": flow},
                       {"prefect.resource.role": "deployment",
                        "prefect.resource.name": deployment}],
        posture="Reactive", threshold=1, within=RERUN_WINDOW,
        parameters=RERUN_PARAMETERS)


def build_deployments(workdir: str, cron: str = NIGHTLY_CRON, timezone: str = NIGHTLY_TIMEZONE,
                      collision: str = DEFAULT_COLLISION) -> list:
    """The three deployments; one run at a time each (a second trigger waits in the queue), and a
    crashed run re-run once (``rerun_on_crash``). All hold the workspace's lock while they run,
    so no two pipelines of the workspace overlap, whichever deployment started them."""
    # Imported here so that the constants above load without Prefect (e.g. for CLI defaults).
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from flows.form import workspace_defaults
    from flows.pipeline import training_pipeline

    limit = ConcurrencyLimitConfig(limit=1,
                                   collision_strategy=ConcurrencyLimitStrategy(collision))
    ws = os.path.abspath(workdir)
    # The form shows this workspace's own values (its params.yaml under the default profile).
    params = {**workspace_defaults(ws), "workdir": ws}
    nightly = training_pipeline.to_deployment(
        name="nightly", schedules=[Cron(cron, timezone=timezone)], parameters=params,
        concurrency_limit=limit, tags=["gptops", "scheduled"],
        triggers=[rerun_on_crash("nightly", training_pipeline.name)],
        description="Scheduled retraining; a new version is promoted only if it beats the "
                    "champion.")
    retrain = training_pipeline.to_deployment(
        name="retrain", parameters=params, concurrency_limit=limit, tags=["gptops", "manual"],
        triggers=[rerun_on_crash("retrain", training_pipeline.name)],
        description="Manual retraining from the Run button (profile, steps, learning rate, "
                    "data source, re-clean).")
    on_data = training_pipeline.to_deployment(
        name=ON_DATA, parameters={**params, "reingest": True}, concurrency_limit=limit,
        tags=["gptops", "data-changed"], triggers=deployment_triggers(ON_DATA, FLOW_NAME),
        description="Retraining when the files of data.source change (gptops serve watches "
                    "them; the run is named data-changed-... and its MLflow runs are tagged "
                    "gptops.trigger).")
    return [nightly, retrain, on_data]


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the gptops deployments")
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--cron", default=NIGHTLY_CRON)
    parser.add_argument("--timezone", default=NIGHTLY_TIMEZONE)
    parser.add_argument("--collision", default=DEFAULT_COLLISION,
                        choices=["ENQUEUE", "CANCEL_NEW"])
    args = parser.parse_args()
    from prefect import serve

    deployments = build_deployments(args.workdir, args.cron, args.timezone, args.collision)
    _wait_for_api()
    serve(*deployments, print_starting_message=True)


def _wait_for_api() -> None:
    """``gptops serve`` starts this runner while its Prefect server boots: wait for the API."""
    from flows.server import healthy, startup_timeout

    api = os.environ.get("PREFECT_API_URL", "")
    deadline = time.monotonic() + startup_timeout()
    while api and not healthy(api, timeout=1.0):
        if time.monotonic() > deadline:
            raise SystemExit(f"the Prefect API at {api} did not answer within "
                             f"{startup_timeout():.0f}s")
        time.sleep(0.2)


if __name__ == "__main__":
    main()
