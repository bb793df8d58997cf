"""The Prefect artifacts of a pipeline run, beyond its markdown summary.

* a **progress** artifact per training step (``pretrain-progress``...), updated as the step's
  progress lines arrive (every ``GPTOPS_PROGRESS_INTERVAL`` seconds, and at its end): the library
  reports its counts on its log records (:func:`gpt.progress.done_of`), rank 0's included when a
  step runs on several processes, and :class:`TrainingProgress` follows them;
* a **table** artifact per evaluated model (``<kind>-evaluation``): metric, value, trivial
  baseline, champion;
* a **link** artifact per MLflow page the run made (its pipeline run, each model version), when
  an MLflow UI serves them (:mod:`flows.links`).
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from flows.report import evaluation_rows
from gpt import progress
from gpt.kinds import KINDS

#: The phases followed: the training steps (``pretrain``, ``finetune``, ``sft``).
TRAINING_STEPS = frozenset(k.step for k in KINDS)


class TrainingProgress(logging.Handler):
    """A log handler that keeps one Prefect progress artifact per training step up to date.

    It reads the count a progress record carries, never its text. The API calls run on a thread
    of their own, newest count per step first: a record is never held up by the server (a lost
    server's retries would otherwise stall the training thread, and every line of this logger
    behind this handler's lock, the lost-server warning included). A failure to reach the server
    never stops the training (the run's log says it once).
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.artifacts: dict[str, UUID] = {}
        self._warned = False
        #: per step: the newest (percent, description) and the context of the record's thread
        #: (Prefect ties an artifact to the flow or task run it finds there)
        self._pending: dict[str, tuple[float, str, contextvars.Context]] = {}
        self._wake = threading.Condition()
        self._closing = False
        self._sender = threading.Thread(target=self._send_loop, name="gptops-progress-artifacts",
                                        daemon=True)
        self._sender.start()

    def emit(self, record: logging.LogRecord) -> None:
        done = progress.done_of(record)
        if done is None or done.unit != "step" or done.name not in TRAINING_STEPS:
            return
        what = f"{done.name}: step {done.done} of {done.total}"
        with self._wake:
            self._pending[done.name] = (done.percent, what, contextvars.copy_context())
            self._wake.notify()

    def _send_loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return
                name, (percent, what, ctx) = next(iter(self._pending.items()))
                del self._pending[name]
            ctx.run(self._send, name, percent, what)

    def _send(self, name: str, percent: float, what: str) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if name in self.artifacts:
                update_progress_artifact(self.artifacts[name], percent, description=what)
            else:
                self.artifacts[name] = create_progress_artifact(
                    percent, key=f"{name}-progress", description=what)
        except Exception as exc:  # noqa: BLE001 - progress is a view; the training goes on
            if not self._warned:
                self._warned = True
                logging.getLogger("gpt.prefect").warning(
                    "the %s progress artifact could not be updated (%s); the run goes on",
                    name, exc)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is pending (at most ``timeout`` seconds), then stop the sender."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._sender.join(timeout)
        super().close()


@contextmanager
def training_progress() -> Iterator[TrainingProgress]:
    """Follow the training steps' progress (``gpt.*`` records) while the block runs."""
    handler = TrainingProgress()
    logger = logging.getLogger("gpt")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        handler.close()


def evaluation_tables(evaluation: dict[str, dict[str, Any]],
                      registered: dict[str, dict[str, Any]]) -> None:
    """A table artifact per evaluated model: metric, value, baseline, champion."""
    from prefect.artifacts import create_table_artifact

    for kind, e in evaluation.items():
        reg = registered.get(kind) or {}
        against = (f"champion v{reg['previous_champion']}" if reg.get("previous_champion")
                   else "the champion" if reg.get("champion_metrics") else "no comparable "
                   "champion")
        create_table_artifact(evaluation_rows(e, reg), key=f"{kind}-evaluation",
                              description=f"the {kind} model's metrics next to its trivial "
                                          f"baseline and {against}")


def link_artifacts(pages: dict[str, str], registered: dict[str, dict[str, Any]]) -> None:
    """A link artifact per MLflow page (``pages``: :func:`flows.links.mlflow_pages`)."""
    from prefect.artifacts import create_link_artifact

    if pages.get("run"):
        create_link_artifact(pages["run"], link_text="MLflow: this pipeline run",
                             key="mlflow-pipeline-run",
                             description="the MLflow parent run of this flow run (its training "
                                         "runs are nested under it)")
    for kind, reg in registered.items():
        if pages.get(kind):
            create_link_artifact(pages[kind],
                                 link_text=f"MLflow: {reg['name']} version {reg['version']}",
                                 key=f"mlflow-{kind}-model",
                                 description=f"the {kind} model version this run registered "
                                             "(or reused) in the MLflow registry")
