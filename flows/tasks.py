"""One Prefect task per pipeline step, each a single call into ``gpt``.

Retries where I/O can fail transiently (DVC remote, MLflow), and once on training steps: they
resume from their own checkpoints, so a retry after a crash continues instead of starting over
(input errors are not retried). Data steps are cached by DVC, training and evaluation by their
step keys (an unchanged step is reused, and the task says so).
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import Task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State

from gpt import dvc_repo, params_file, stopping
from gpt.errors import GptopsError, Interrupted
from gpt.layout import Workspace
from gpt.pipeline import context
from gpt.pipeline.context import RunContext
from gpt.registry import Registration

if TYPE_CHECKING:  # torch and pandas: imported by the first task that runs a step (or by
    # `gptops run` while its server boots), not by every process that imports the flow
    # (`gptops serve`'s deployment runner, which runs each flow run in a process of its own)
    from gpt.evaluate import ModelEval
    from gpt.pipeline.steps import StepResult


def _steps():  # -> gpt.pipeline.steps
    from gpt.pipeline import steps

    return steps


class _StoppableTask(Task):
    """A task that a deliberate stop (SIGTERM/SIGINT) ends Cancelled, not Crashed: no "Crash
    detected!" lines, no retry, no crash automation. Called from a flow, it raises the stop
    again (:class:`Interrupted`), so the flow stops too (``flows.pipeline`` ends it
    Cancelled)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = super().__call__(*args, **kwargs)
        if isinstance(out, State) and out.is_cancelled():
            raise stopping.stopped() or Interrupted(signal.SIGTERM, out.message or "cancelled")
        return out


def task(**options: Any) -> Callable[[Callable[..., Any]], Task]:
    """``prefect.task`` for a pipeline step (see :class:`_StoppableTask`)."""

    def decorate(fn: Callable[..., Any]) -> Task:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except Interrupted as exc:
                return Cancelled(message=str(stopping.remember(exc)))

        return _StoppableTask(fn=run, **options)

    return decorate


def not_input_error(task, task_run, state) -> bool:
    """Retry crashes (killed worker, I/O) but not input errors, which would fail again."""
    return not isinstance(state.data, GptopsError)


@task(name="prepare-workspace", task_run_name="prepare-workspace", cache_policy=NO_CACHE)
def prepare_workspace(ctx: RunContext, save: bool = False) -> RunContext:
    """Make the folder a DVC workspace and write this run's data overrides into params.yaml."""
    return context.open_workspace(ctx, save)


@task(name="restore-params", task_run_name="restore-params", cache_policy=NO_CACHE)
def restore_params(workdir: str) -> bool:
    """Put the workspace's params.yaml back as it was before this run's one-off overrides."""
    return params_file.restore_params(Path(workdir))


@task(name="data-stage", task_run_name="{stage}", cache_policy=NO_CACHE)
def data_stage(workdir: str, stage: str, force: bool = False) -> dict[str, Any]:
    """Reproduce one DVC stage (ingest, clean or tokenize) if its inputs changed."""
    outcome = dvc_repo.run_stage(Path(workdir), stage, force=force)
    report = Workspace(Path(workdir)).clean_report
    if stage == "clean" and report.is_file():
        create_markdown_artifact(report.read_text(encoding="utf-8"), key="cleaning-report",
                                 description="documents kept/rejected per reason, PII, dedup")
    return {"stage": outcome.stage, "ran": outcome.ran}


@task(name="check-tasks", task_run_name="check-tasks", cache_policy=NO_CACHE)
def check_tasks(ctx: RunContext) -> None:
    """Check the built-in fine-tuning/SFT tasks can be built from the cleaned data."""
    from gpt.preflight import check_tasks_on_data

    check_tasks_on_data(ctx.params, ctx.workdir)


@task(name="version-data", task_run_name="version-data", retries=2, retry_delay_seconds=5,
      cache_policy=NO_CACHE)
def version_data(workdir: str) -> str:
    """Push the data outputs to the DVC remote and return the data version."""
    dvc_repo.push(Path(workdir))
    return dvc_repo.data_version(Path(workdir))


@task(name="pin-base", task_run_name="pin-base", retries=2, retry_delay_seconds=5,
      cache_policy=NO_CACHE)
def pin_base(ctx: RunContext) -> RunContext:
    """Resolve a registered base's alias once, so every step of the run tunes that version."""
    return context.pin_base(ctx)


@task(name="pretrain", task_run_name="pretrain", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5, retry_condition_fn=not_input_error)
def pretrain(ctx: RunContext) -> StepResult:
    """Pretrain the base GPT by next-token prediction (reused when its key is unchanged)."""
    return _steps().pretrain_step(ctx)


@task(name="finetune", task_run_name="finetune", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5, retry_condition_fn=not_input_error)
def finetune(ctx: RunContext) -> StepResult:
    """Fine-tune the base as a classifier (reused when its key is unchanged)."""
    return _steps().finetune_step(ctx)


@task(name="sft", task_run_name="sft", cache_policy=NO_CACHE, retries=1,
      retry_delay_seconds=5, retry_condition_fn=not_input_error)
def sft(ctx: RunContext) -> StepResult:
    """Supervised fine-tuning of the base LM on prompt/completion pairs."""
    return _steps().sft_step(ctx)


@task(name="evaluate", task_run_name="evaluate", cache_policy=NO_CACHE)
def evaluate(ctx: RunContext) -> dict[str, ModelEval]:
    """Each model's metrics next to its trivial baseline (reused when its key is unchanged)."""
    return _steps().evaluate_step(ctx)


@task(name="register", task_run_name="register", retries=1, retry_delay_seconds=5,
      cache_policy=NO_CACHE)
def register(ctx: RunContext, evaluation: dict[str, ModelEval]) -> dict[str, Registration]:
    """Register the models in MLflow and apply the promotion gate."""
    return _steps().register_step(ctx, evaluation)


@task(name="tune-study", task_run_name="tune-study", cache_policy=NO_CACHE)
def tune_study(ctx: RunContext, study: str = "") -> dict[str, Any]:
    """Run or resume the Optuna study of tune.space; register the best trial's model."""
    from dataclasses import asdict

    from gpt.tune import run_study

    return asdict(run_study(ctx, study))
