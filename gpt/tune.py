"""Hyperparameter search: an Optuna study over pretraining runs (TPE sampler, median pruner).

Each trial is a pretraining step (:func:`gpt.pipeline.steps.pretrain_step`) with the trial's
values of ``tune.space`` and ``train.max_steps = tune.steps_per_trial``, so it is keyed like any
step: a trial whose values were trained before (in this study or another) reuses that step. Its
MLflow run nests under the study's parent run. At each evaluation point of the loop the trial
reports ``val_loss``; the median pruner stops a trial worse than the median of the earlier ones
there (its run ends KILLED, the trial PRUNED). What a trial reported is kept next to its step
(``tune.json``), so a repeated trial replays it instead of training again.

The study lives in the workspace (``.gptops/optuna.db``): a killed study resumes, running only
the trials it lacks (the one that was running is re-run, resuming its checkpoints). The best
trial's model is evaluated and registered like any base candidate, through the gate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gpt.config import TUNE_OBJECTIVES, Params, TuneRange, get_dotted, resolve_params
from gpt.errors import ConfigError, StoppedEarly, TrainingError
from gpt.kinds import BASE
from gpt.layout import Workspace
from gpt.pipeline import keys, steps
from gpt.pipeline.context import RunContext
from gpt.pipeline.paths import RunPaths
from gpt.registry import Tracking

log = logging.getLogger(__name__)

#: What a trial reported, kept in its pretraining step's folder.
RECORD = "tune.json"
#: The loop's metric a trial reports at each evaluation point (pruning compares it).
REPORTED = "val_loss"


@dataclass
class TuneResult:
    """What a study holds after a call, and what this call did."""

    study: str
    storage: str
    objective: str
    direction: str
    trials: int = 0  #: finished trials (complete + pruned)
    complete: int = 0
    pruned: int = 0
    trained: int = 0  #: trials whose pretraining ran in this call (the others were reused)
    seconds: float = 0.0
    best_trial: int = -1
    best_value: float = float("nan")
    best_params: dict[str, Any] = field(default_factory=dict)
    registered: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  #: one per trial


def load_params(workdir: Path, profile: str, overrides: list[str] | None) -> Params:
    """The workspace's params for a study. A workspace made before ``tune:`` existed takes the
    project's section (said once), so its older params.yaml need not be edited first."""
    from gpt.config import read_params_file, with_project_defaults

    path = Workspace(Path(workdir)).params_yaml
    raw = read_params_file(path)
    if "tune" not in raw:
        log.info("tune: %s has no tune: section; using the project's (copy it there to change "
                 "it)", path)
    return resolve_params(with_project_defaults(raw, path), profile, overrides)


def storage_url(workdir: Path) -> str:
    """``sqlite:///<workdir>/.gptops/optuna.db`` (its folder created)."""
    path = Workspace(Path(workdir).resolve()).optuna_db
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_name(params: Params, data_version: str) -> str:
    """``tune-<hash>`` of what the trials read: the data, the ``tune`` section and the model
    and train values they start from. Changing any of them starts another study, except
    ``tune.trials``: a larger budget goes on with the same study."""
    dump = params.model_dump(mode="json")
    search = {k: v for k, v in dump["tune"].items() if k != "trials"}
    blob = json.dumps({"data_version": data_version, "tune": search,
                       "model": dump["model"], "train": dump["train"]}, sort_keys=True)
    return f"tune-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def trial_params(params: Params, values: dict[str, Any]) -> Params:
    """``params`` with a trial's values and ``train.max_steps = tune.steps_per_trial``,
    validated like any params (a shape the model refuses is a ConfigError)."""
    tree = params.model_dump(mode="json")
    profile = tree.pop("profile")
    tree["profiles"] = {profile: {}}
    return resolve_params(tree, profile, {**values, "train.max_steps":
                                          params.tune.steps_per_trial})


def suggest(trial: Any, params: Params) -> dict[str, Any]:
    """The trial's value of each key of ``tune.space`` (an int parameter's range gives ints)."""
    from gpt.config import get_dotted

    out: dict[str, Any] = {}
    for key, spec in params.tune.space.items():
        if not isinstance(spec, TuneRange):
            out[key] = trial.suggest_categorical(key, spec)
            continue
        current = get_dotted(params, key)
        if isinstance(current, int) and not isinstance(current, bool):
            out[key] = trial.suggest_int(key, math.ceil(spec.low), math.floor(spec.high),
                                         log=spec.log)
        else:
            out[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
    return out


class _Record:
    """What a trial reported at each evaluation point, and why it stopped (if it did), kept in
    its step's folder so a repeated trial replays it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = json.loads(path.read_text()) if path.is_file() else {}
        self.values: dict[int, float] = {int(k): v for k, v in data.get("values", {}).items()}
        self.stopped: str = data.get("stopped", "")
        self.diverged: bool = data.get("diverged", False)
        #: evaluation key -> the finished trial's metrics (the objective among them)
        self.metrics: dict[str, dict[str, float]] = data.get("metrics", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"values": self.values, "stopped": self.stopped,
                                   "diverged": self.diverged, "metrics": self.metrics},
                                  indent=1))
        os.replace(tmp, self.path)


class _Pruning:
    """The loop's metrics callback of one trial: reports ``val_loss`` to Optuna and stops the
    step (:class:`StoppedEarly`) when the pruner says so."""

    def __init__(self, trial: Any, record: _Record) -> None:
        self.trial, self.record = trial, record
        self.reported: set[int] = set()

    def report(self, step: int, value: float) -> None:
        """Once per step: a resumed step repeats the evaluations after its checkpoint."""
        if step not in self.reported:
            self.trial.report(value, step)
            self.reported.add(step)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(REPORTED)
        if value is None:
            return
        self.report(step, value)
        self.record.values[step] = value
        if self.trial.should_prune():
            self.record.stopped = (f"trial {self.trial.number} pruned at step {step}: "
                                   f"{REPORTED} {value:.4g} is worse than the median of the "
                                   "earlier trials there")
        self.record.save()
        if self.record.stopped:
            raise StoppedEarly(self.record.stopped)


def _objective(ctx: RunContext, study: str, trained: list[int]) -> Callable[[Any], float]:
    import optuna

    params, data_version, tracking = ctx.params, ctx.data_version, ctx.tracking
    assert tracking is not None
    metric = params.tune.objective
    paths = ctx.paths

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, params)
        tp = trial_params(params, values)
        key = keys.pretrain(tp, data_version)
        trial.set_user_attr("step_key", key.digest)
        record = _Record(paths.step(key) / RECORD)
        monitor = _Pruning(trial, record)
        finished = paths.read_result(key) is not None
        for step, value in sorted(record.values.items()):  # a repeated trial: replay
            monitor.report(step, value)
        if not finished and record.stopped and (record.diverged or trial.should_prune()):
            log.info("trial %d: reused (key %s): %s", trial.number, key.short, record.stopped)
            raise optuna.TrialPruned(record.stopped)
        record.stopped = ""
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in values.items())
        log.info("trial %d: %s (key %s)", trial.number, shown, key.short)
        run = replace(tracking, tags={**tracking.tags, "gptops.study": study,
                                      "gptops.trial": str(trial.number)})
        try:
            result = steps.pretrain_step(replace(ctx, params=tp, tracking=run), monitor)
        except StoppedEarly as exc:
            trained.append(trial.number)
            log.info("%s", exc)
            raise optuna.TrialPruned(str(exc)) from None
        except TrainingError as exc:  # diverged or out of memory: a bad point of the space
            trained.append(trial.number)
            record.stopped, record.diverged = f"trial {trial.number} stopped: {exc}", True
            record.save()
            log.warning("%s", record.stopped)
            raise optuna.TrialPruned(record.stopped) from None
        if not result.reused:
            trained.append(trial.number)
        metrics = _metrics(paths, tp, data_version, key, record)
        trial.set_user_attr("run_id", result.run_id or "")
        trial.set_user_attr("metrics", metrics)
        return float(metrics[metric])

    return objective


def _metrics(paths: RunPaths, params: Params, data_version: str, key: keys.StepKey,
             record: _Record) -> dict[str, float]:
    """A finished trial's evaluation metrics: those the base evaluation computes, without its
    sample generations (only the best trial's model gets the whole evaluation, when it is
    registered); kept in the trial's record under the evaluation's key."""
    from gpt import evaluate as ev
    from gpt.pipeline.paths import Inputs
    from gpt.registry import require_finite

    eval_key = keys.evaluation(BASE.name, params, data_version).digest
    if eval_key not in record.metrics:
        e = params.evaluate
        model = Inputs(paths, params).language_model(key)
        metrics = ev.perplexity(model, paths.tokens, e.ppl_batches, e.batch_size, e.seed,
                                mixture=params.data.mixture)
        require_finite(metrics, f"trial evaluation (key {key.short})")
        record.metrics[eval_key] = metrics
        record.save()
    return record.metrics[eval_key]


def _settle_stale(study: Any, space: dict[str, Any]) -> int:
    """Trials left RUNNING by a killed study (the caller holds the workspace, so none is
    alive): FAIL them, and queue their values again so they re-run (resuming their step)."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        if set(t.params) == set(space):
            study.enqueue_trial(t.params)
    if stale:
        log.warning("trial(s) %s were left running by a killed study: marked failed and queued "
                    "again (they resume from their checkpoints)",
                    ", ".join(str(t.number) for t in stale))
    return len(stale)


def _rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = t.duration.total_seconds() if t.duration else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     **{f"params.{k}": v for k, v in t.params.items()},
                     "last_step": max(t.intermediate_values, default=None),
                     "seconds": duration, "step_key": t.user_attrs.get("step_key", "")})
    return rows


def open_study(workdir: Path, params: Params, data_version: str, name: str = ""):  # -> Study
    """The workspace's study for these params (created, or loaded to resume)."""
    import optuna

    optuna.logging.disable_default_handler()  # its lines go through our log handler instead
    optuna.logging.enable_propagation()
    t = params.tune
    study = optuna.create_study(
        storage=storage_url(workdir), study_name=name or study_name(params, data_version),
        direction=TUNE_OBJECTIVES[t.objective], load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=t.pruner_startup_trials))
    if study.direction.name.lower() != TUNE_OBJECTIVES[t.objective]:
        raise ConfigError(f"study '{study.study_name}' was made to "
                          f"{study.direction.name.lower()}; name another study (--study)")
    # Seeded by the trials it holds: a resumed study does not suggest trial 0's values again,
    # and a new study with the same seed suggests the same trials.
    study.sampler = optuna.samplers.TPESampler(seed=t.seed + len(study.trials))
    return study


def run_study(ctx: RunContext, name: str = "") -> TuneResult:
    """Run (or resume) the study of ``ctx.params.tune`` until it holds ``tune.trials`` finished
    trials, then register the best trial's model through the gate.

    ``ctx.tracking`` must carry the study's parent run (:func:`gpt.registry.pipeline_run`).

    Raises:
        ConfigError: a trial's values the model refuses.
    """
    from optuna.trial import TrialState

    workdir, params, data_version, tracking = ctx.workdir, ctx.params, ctx.data_version, \
        ctx.tracking
    assert tracking is not None
    from gpt.launch import World
    from gpt.train import resolve_device

    t0 = time.perf_counter()
    t = params.tune
    resolve_device(params.launch.device)  # a missing GPU fails now, not as a pruned trial each
    world = World.of(params.launch, get_dotted(params, BASE.batch_key), BASE.batch_key)
    if world.size > 1:  # the pruner reads the loop's reports in this process
        raise ConfigError(f"gptops tune runs each trial in one process, not {world.size}: set "
                          "launch.nproc_per_node=1 (and launch.nnodes=1)")
    study = open_study(workdir, params, data_version, name)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    _settle_stale(study, t.space)
    finished = len(study.get_trials(deepcopy=False, states=done))
    trained: list[int] = []
    if finished >= t.trials:
        log.info("tune: study %s holds %d finished trials already: nothing to run",
                 study.study_name, finished)
    else:
        log.info("tune: study %s: %d of %d trials finished; running %d (%s, %d steps each)",
                 study.study_name, finished, t.trials, t.trials - finished, t.objective,
                 t.steps_per_trial)
        study.optimize(_objective(ctx, study.study_name, trained),
                       n_trials=t.trials - finished, catch=())
    out = TuneResult(study.study_name, storage_url(workdir), t.objective,
                     TUNE_OBJECTIVES[t.objective], trained=len(trained),
                     mlflow_run_id=tracking.parent_run_id, rows=_rows(study))
    states = [r["state"] for r in out.rows]
    out.complete, out.pruned = states.count("complete"), states.count("pruned")
    out.trials = out.complete + out.pruned
    if out.complete:
        best = study.best_trial
        out.best_trial, out.best_value = best.number, float(best.value)
        out.best_params = dict(best.params)
        out.registered = _register_best(ctx, study, best)
    else:
        log.warning("tune: no trial of study %s completed (all pruned): nothing to register",
                    study.study_name)
    out.seconds = round(time.perf_counter() - t0, 2)
    _log_study(tracking, out, study)
    return out


def _register_best(ctx: RunContext, study: Any, best: Any) -> dict[str, Any]:
    """The best trial's model as a base candidate, through the gate like any other."""
    from gpt import progress

    assert ctx.tracking is not None
    run = replace(ctx.tracking, tags={**ctx.tracking.tags, "gptops.study": study.study_name,
                                      "gptops.trial": str(best.number)})
    trial = replace(ctx, params=trial_params(ctx.params, best.params), tracking=run)
    evaluation = steps.evaluate_base_step(trial)
    with progress.phase(f"tune: register trial {best.number}"):
        reg = steps.register_step(trial, {BASE.name: evaluation})
    return asdict(reg[BASE.name])


def _log_study(tracking: Tracking, out: TuneResult, study: Any = None) -> None:
    """The trials as a table (JSON and CSV), the best trial and (with matplotlib) the
    optimisation history as an image, on the study's parent run."""
    if not tracking.parent_run_id:
        return
    import pandas as pd

    from gpt.registry.tracking import client, log_metrics, log_table

    run_id = tracking.parent_run_id
    log_table(tracking.uri, run_id, out.rows, "tune/trials.json")
    client(tracking.uri).log_text(run_id, pd.DataFrame(out.rows).to_csv(index=False),
                                  "tune/trials.csv")
    log_metrics(tracking.uri, run_id, {"tune/trials": out.trials, "tune/pruned": out.pruned,
                                       "tune/trained": out.trained, "tune/best_value":
                                       out.best_value})
    c = client(tracking.uri)
    c.set_tag(run_id, "gptops.study", out.study)
    if study is not None:
        _log_history_plot(c, run_id, study)
    if out.best_trial >= 0:
        c.set_tag(run_id, "gptops.best_trial", str(out.best_trial))
        c.log_dict(run_id, {"best_trial": out.best_trial, "best_value": out.best_value,
                            "best_params": out.best_params, "objective": out.objective,
                            "registered": out.registered}, "tune/best.json")


def _log_history_plot(c: Any, run_id: str, study: Any) -> None:
    """``tune/history.png``: the objective per trial and the best so far. Optional: without
    matplotlib, or if Optuna cannot draw it, the tables above are the record."""
    import warnings

    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: draw to files only
        import matplotlib.pyplot as plt
        from optuna.visualization.matplotlib import plot_optimization_history
    except ImportError:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            ax = plot_optimization_history(study)
        c.log_figure(run_id, ax.figure, "tune/history.png")
        plt.close(ax.figure)
    except Exception as exc:  # noqa: BLE001 - a plot must not fail a finished study
        log.warning("tune: the optimisation history plot was not logged: %s", exc)
