"""Imports a training run will need, done early in a background thread while the process waits.

While DVC runs the data stages (each a process of its own), ``gptops run``'s own process mostly
waits, and the second core is free. Once a stage has run, the models will be trained again, so
what their steps import later on the critical path can be imported now instead: ``torch._dynamo``
(torch's optimizers import it at their first use, 1.8 s), transformers' GPT-2 classes (the
registry's export, 1.3 s), scikit-learn's metrics (evaluation, 1 s), MLflow's map of
installed packages (built once per process when a model is logged, 1.1 s) and matplotlib's
figure classes (the classifier's confusion matrix, drawn at registration, 1 s). A run whose data
stages are all reused starts none of it (its steps are reused too, and need none of it), and
neither does a busy machine: with no idle core the imports only move, and a run that stops
before its steps needed them (a failed or stopped run) pays for them all.

"Idle" is measured while the data stages run (:func:`mark` before them): the CPU's idle time
over that window, not the 1-minute load average, which still counts a command that ended a
minute ago (right after ``scripts/setup.sh``, the README's first run never warmed up).

Errors are ignored here: a missing or changed library fails where the run really uses it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time

_started: list[threading.Thread] = []
#: (monotonic seconds, the CPU's idle seconds summed over its cores) at :func:`mark`
_marked: list[tuple[float, float]] = []

#: A core counts as free when at least this much of one was idle over the measured window.
IDLE_SHARE = 0.75
#: A shorter window says too little: the load average decides then.
MIN_WINDOW_S = 0.5

#: Modules the training, evaluation and registration steps import, in the order they need them
#: (a warm-up still running when training starts has done the first ones).
MODULES = ("torch._dynamo", "transformers.models.gpt2.modeling_gpt2", "sklearn.metrics",
           "rouge_score.rouge_scorer", "mlflow.transformers", "matplotlib.figure",
           "matplotlib.backends.backend_agg")


def _warm() -> None:
    for name in MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    with contextlib.suppress(Exception):  # what logging a model first does (MLflow 3)
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map

        _init_packages_to_modules_map()


def _idle_seconds() -> float | None:
    """The CPU's idle (and I/O-wait) seconds since boot, summed over its cores."""
    try:
        import psutil

        t = psutil.cpu_times()
    except Exception:  # noqa: BLE001 - no counters on this system
        return None
    return float(t.idle + getattr(t, "iowait", 0.0))


def mark() -> None:
    """Start the window over which :func:`idle_core` measures (before the data stages)."""
    idle = _idle_seconds()
    _marked[:] = [] if idle is None else [(time.monotonic(), idle)]


def idle_core() -> bool:
    """Whether a core is free: since :func:`mark`, at least ``IDLE_SHARE`` of a core was idle
    (without a mark, or over a window too short to say: the 1-minute load average is below the
    cores less one)."""
    now, idle = time.monotonic(), _idle_seconds()
    if _marked and idle is not None and now - _marked[0][0] >= MIN_WINDOW_S:
        return (idle - _marked[0][1]) / (now - _marked[0][0]) >= IDLE_SHARE
    try:
        return os.getloadavg()[0] < (os.cpu_count() or 1) - 1
    except OSError:  # no load average on this system
        return False


def training_imports_soon(only_if_idle: bool = True) -> bool:
    """Start the imports in a daemon thread, once per process (with ``only_if_idle``, only when
    :func:`idle_core`); True when they were started, now or before."""
    if not _started and (not only_if_idle or idle_core()):
        _started.append(threading.Thread(target=_warm, name="gptops-warmup", daemon=True))
        _started[0].start()
    return bool(_started)
