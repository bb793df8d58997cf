"""Deployments of ``training_pipeline``: ``nightly`` (cron) and ``retrain`` (Run button).

``python -m flows.deploy`` serves both from this process (what ``gptops serve`` starts);
``prefect.yaml`` declares the same two for ``prefect deploy`` to a work pool.
"""

from __future__ import annotations

import argparse
import os

#: The nightly schedule's one home: ``gptops serve`` and ``python -m flows.deploy`` default to
#: these; prefect.yaml (static, for ``prefect deploy``) must state the same, which
#: tests/integration/test_infra.py checks against ``build_deployments``.
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "UTC"
#: What a second trigger does while a run is in progress (ENQUEUE: it waits; CANCEL_NEW).
DEFAULT_COLLISION = "ENQUEUE"


def build_deployments(workdir: str, cron: str = NIGHTLY_CRON, timezone: str = NIGHTLY_TIMEZONE,
                      collision: str = DEFAULT_COLLISION) -> list:
    """The two deployments; one run at a time each (a second trigger waits in the queue)."""
    # Imported here so that the constants above load without Prefect (e.g. for CLI defaults).
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from flows.pipeline import form_defaults, training_pipeline

    limit = ConcurrencyLimitConfig(limit=1,
                                   collision_strategy=ConcurrencyLimitStrategy(collision))
    ws = os.path.abspath(workdir)
    # The form shows this workspace's own values (its params.yaml under the default profile).
    params = {**form_defaults(os.path.join(ws, "params.yaml")), "workdir": ws}
    nightly = training_pipeline.to_deployment(
        name="nightly", schedules=[Cron(cron, timezone=timezone)], parameters=params,
        concurrency_limit=limit, tags=["gptops", "scheduled"],
        description="Scheduled retraining; a new version is promoted only if it beats the "
                    "champion.")
    retrain = training_pipeline.to_deployment(
        name="retrain", parameters=params, concurrency_limit=limit, tags=["gptops", "manual"],
        description="Manual retraining from the Run button (profile, steps, learning rate, "
                    "data source, re-clean).")
    return [nightly, retrain]


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the gptops deployments")
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--cron", default=NIGHTLY_CRON)
    parser.add_argument("--timezone", default=NIGHTLY_TIMEZONE)
    parser.add_argument("--collision", default=DEFAULT_COLLISION,
                        choices=["ENQUEUE", "CANCEL_NEW"])
    args = parser.parse_args()
    from prefect import serve

    serve(*build_deployments(args.workdir, args.cron, args.timezone, args.collision),
          print_starting_message=True)


if __name__ == "__main__":
    main()
