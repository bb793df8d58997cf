"""Deliberate stops: SIGTERM and SIGINT (Ctrl-C) end a command in one line naming the step.

:func:`on_signals` makes the first SIGTERM/SIGINT raise :class:`gpt.errors.Interrupted` in the
main thread, with a message naming the step that ran (``evaluate: stopped by SIGTERM``); the CLI
prints it as its one line and exits with 128 + the signal (143, 130). Later signals are ignored
while the command cleans up (locks released, params.yaml put back), which takes seconds.

Code that must not be cut at an arbitrary bytecode does not run in the main thread: the data
stages run DVC in a worker thread (``gpt.dvc_repo.run_stage``), so an exception raised by the
handler never lands inside DVC's lock-file writes; the training loop defers the stop to the end
of its step (``gpt.train``), where it saves a checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from gpt.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_steps: list[str] = []  # named by step(): the narrowest name
_commands: list[str] = []  # named by on_signals(): used when nothing narrower runs
_stopped: list[Interrupted] = []  # the first stop of this process (at most one)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Name the step that runs, for the stop line (innermost wins)."""
    _steps.append(name)
    try:
        yield
    finally:
        _steps.pop()


def current_step() -> str:
    """The innermost :func:`step`, else the Prefect task run this thread is in, else the
    innermost :func:`on_signals` name."""
    if _steps:
        return _steps[-1]
    context = sys.modules.get("prefect.context")  # looked up, never imported (gpt has no Prefect)
    ctx = context.TaskRunContext.get() if context is not None else None
    if ctx is not None:
        return ctx.task_run.name
    return _commands[-1] if _commands else "gptops"


def remember(exc: Interrupted) -> Interrupted:
    """Record ``exc`` as this process's stop (the first one stays); return the recorded one."""
    if not _stopped:
        _stopped.append(exc)
    return _stopped[0]


def stopped() -> Interrupted | None:
    """The stop this process received (None: none)."""
    return _stopped[0] if _stopped else None


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def signum_of(exc: BaseException) -> int | None:
    """The signal behind ``exc``: ours, Ctrl-C's ``KeyboardInterrupt``, Prefect's
    ``TerminationSignal`` (which carries ``.signal``); None for anything else."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    sig = getattr(exc, "signal", None)
    return sig if isinstance(sig, int) and sig in SIGNALS else None


def _handle(signum: int, frame: object) -> None:
    if _stopped:  # already stopping: let the cleanup finish (it is bounded)
        return
    raise remember(Interrupted(signum, f"{current_step()}: stopped by {signal_name(signum)}"))


@contextlib.contextmanager
def on_signals(name: str | None = None) -> Iterator[None]:
    """SIGTERM/SIGINT raise :class:`Interrupted` naming the current step (main thread only;
    elsewhere a no-op). ``name`` names the step for code outside any narrower step."""
    previous: dict[int, object] = {}
    outermost = not any(signal.getsignal(s) is _handle for s in SIGNALS)
    if threading.current_thread() is threading.main_thread():
        if outermost:
            _stopped.clear()  # a new command in this process (tests run several)
        for sig in SIGNALS:
            previous[sig] = signal.signal(sig, _handle)
    _commands.append(name or (_commands[-1] if _commands else "gptops"))
    try:
        yield
    finally:
        _commands.pop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
