"""Progress of long phases (training, evaluation, registration): a live bar and plain log lines.

A phase is one long piece of work with an optional known size::

    with progress.phase("pretrain", total=600, start=0, unit="step") as p:
        for step in range(600):
            ...
            p.update(step + 1, loss=loss, tokens=tokens_this_step)
            p.note(val_loss=val)          # sticky extra metrics, shown from now on

    with progress.phase("register gptops-base"):   # total=None: a spinner
        ...

    for batch in progress.track(batches, "evaluate: perplexity", unit="batch"):
        ...

Two modes:

* **interactive** when ``sys.stderr`` is a TTY (or ``GPTOPS_PROGRESS=bar``) and
  ``GPTOPS_PROGRESS`` is not ``plain``: a ``rich`` progress bar on stderr (description, bar,
  step/total, loss, tok/s, elapsed, ETA) that stays on screen when the phase ends. Only one bar
  is live at a time: a phase opened while another one is live (nested) logs plain lines only.
* **plain** otherwise (CI, Prefect logs): no bar.

In both modes the phase logs plain INFO lines on the logger ``gpt.progress`` every
``GPTOPS_PROGRESS_INTERVAL`` seconds (default :data:`DEFAULT_INTERVAL`; ``0`` logs every update)
and always one line when the phase ends, e.g.::

    pretrain: step 120/600 (20%) loss 5.1234 | 12,510 tok/s | elapsed 42s | ETA 2m 48s
    pretrain: step 600/600 (100%) loss 4.2100 | 12,480 tok/s | val_loss 4.3 | elapsed 3m 30s | done

Log-record contract: while a bar shows the same information, the records carry
``extra={"gptops_bar": True}`` (attribute :data:`BAR_RECORD_ATTR`). **Terminal handlers drop
records with gptops_bar** (attach :class:`BarRecordFilter`), so the terminal shows the bar and
not the duplicate lines, while other handlers (Prefect's API log handler, files) keep them. For a
terminal handler that does not garble the live bar, build it on :func:`get_console` (e.g.
``rich.logging.RichHandler(console=progress.get_console())``).

Each line of a phase with a known size also carries its count as a :class:`Done` (attribute
:data:`DONE_RECORD_ATTR`, read with :func:`done_of`), so a handler can follow a phase without
parsing text: ``flows`` turns the training steps' counts into Prefect progress artifacts. A line
relayed from another process (:mod:`gpt.launch`) is parsed back with :func:`parse_line`.

Under ``torch.distributed`` only rank 0 shows or logs progress. Importing this module has no side
effects and does not import torch or rich.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

log = logging.getLogger(__name__)

#: Seconds between plain progress lines unless ``GPTOPS_PROGRESS_INTERVAL`` says otherwise.
DEFAULT_INTERVAL = 10.0
#: Environment variable: ``plain`` (never a bar), ``bar`` (always a bar), unset/``auto`` (TTY).
MODE_ENV = "GPTOPS_PROGRESS"
#: Environment variable: seconds between plain progress lines (``0`` = every update).
INTERVAL_ENV = "GPTOPS_PROGRESS_INTERVAL"
#: Attribute set (True) on progress records that a live bar already shows.
BAR_RECORD_ATTR = "gptops_bar"
#: Attribute set on the records of a phase with a known size: its :class:`Done`.
DONE_RECORD_ATTR = "gptops_done"
#: Seconds of history behind the rate shown on the bar.
_BAR_RATE_WINDOW = 5.0

T = TypeVar("T")

_console: Console | None = None
_live: Phase | None = None  # the phase whose bar is on screen


def fmt_rate(tokens_per_sec: float) -> str:
    """Throughput with a thousands separator and no decimals.

    Args:
        tokens_per_sec: Tokens per second.

    Returns:
        E.g. ``"12,510 tok/s"``; ``"? tok/s"`` for a non-finite rate.
    """
    if not math.isfinite(tokens_per_sec):
        return "? tok/s"
    return f"{max(0, round(tokens_per_sec)):,} tok/s"


def fmt_duration(seconds: float) -> str:
    """A short human duration.

    Args:
        seconds: Duration in seconds.

    Returns:
        ``"42s"``, ``"1m 05s"`` or ``"2h 03m"``; ``"?"`` for a non-finite duration.
    """
    if not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Done:
    """How far a phase with a known size is: ``done`` of ``total`` ``unit``s."""

    name: str  #: the phase, e.g. ``pretrain``
    unit: str  #: e.g. ``step``
    done: int
    total: int

    @property
    def percent(self) -> float:
        """0 to 100 (100 for an empty phase)."""
        return 100.0 * min(self.done, self.total) / self.total if self.total > 0 else 100.0


#: The head of a plain line of a phase with a known size (:meth:`Phase.line`).
_COUNTED = re.compile(r"^(?P<name>.+?): (?P<unit>\S+) (?P<done>\d+)/(?P<total>\d+) \(\d+%\)")


def parse_line(text: str) -> Done | None:
    """The count a plain progress line states (``pretrain: step 120/600 (20%) ...``), if any."""
    m = _COUNTED.match(text)
    if m is None:
        return None
    return Done(m["name"], m["unit"], int(m["done"]), int(m["total"]))


def done_of(record: logging.LogRecord) -> Done | None:
    """The count a progress record carries (None: not a counted phase's line)."""
    done = getattr(record, DONE_RECORD_ATTR, None)
    return done if isinstance(done, Done) else None


def _fmt_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def interval() -> float:
    """Seconds between plain progress lines (``GPTOPS_PROGRESS_INTERVAL``, default 10)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        return max(0.0, float(raw))
    except ValueError:
        return DEFAULT_INTERVAL


def interactive() -> bool:
    """Whether phases draw a live bar (see the module docstring for the rules)."""
    mode = os.environ.get(MODE_ENV, "auto").strip().lower()
    if mode == "plain":
        return False
    if mode == "bar":
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr replaced or closed
        return False


def is_rank0() -> bool:
    """False on the non-zero ranks of a ``torchrun``/``torch.distributed`` job.

    Looks at torch only when it is already imported (no import cost here).
    """
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def get_console() -> Console:
    """The shared stderr console the bars draw on (share it with a terminal log handler)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(stderr=True)
    return _console


class BarRecordFilter(logging.Filter):
    """A filter for terminal handlers: drops progress records that a live bar already shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, BAR_RECORD_ATTR, False)


class Phase:
    """One phase's progress: a bar (interactive mode) and plain log lines.

    Build it with :func:`phase`; use it as a context manager.
    """

    def __init__(self, name: str, total: int | None = None, start: int = 0, unit: str = "step",
                 *, enabled: bool = True, bar: bool | None = None,
                 console: Console | None = None, logger: logging.Logger | None = None) -> None:
        self.name = name
        self.total = total
        self.start = start
        self.unit = unit
        self.done = start
        self.loss: float | None = None
        self.metrics: dict[str, Any] = {}
        self.enabled = enabled and is_rank0()
        self._want_bar = interactive() if bar is None else bar
        self._console = console
        self._log = logger or log
        self._interval = interval()
        self._progress: Progress | None = None
        self._task: Any = None
        self._tokens = 0
        self._updated = False
        self._closed = False
        self._t0 = self._t_log = time.perf_counter()
        self._tokens_log = 0
        self._rate_samples: deque[tuple[float, int]] = deque()

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Phase:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(ok=exc_type is None)

    def open(self) -> Phase:
        """Start the clock and, in interactive mode with no other bar live, the bar."""
        global _live
        self._t0 = self._t_log = time.perf_counter()
        self._rate_samples.append((self._t0, 0))
        if self.enabled and self._want_bar and _live is None:
            self._progress = _make_progress(self._console or get_console())
            self._task = self._progress.add_task(
                self.name, total=self.total, completed=self.start, count="", loss="", rate="",
                extra="")
            self._progress.start()
            _live = self
        return self

    def close(self, ok: bool = True) -> None:
        """Log the final line and stop the bar (it stays on screen). Idempotent."""
        global _live
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        try:
            if self._progress is not None:
                self._refresh_bar(time.perf_counter())
                if ok and self.total is None:  # a finished spinner: show the check mark
                    self._progress.update(self._task, total=max(self.done, 1),
                                          completed=max(self.done, 1))
                self._progress.stop()
        finally:
            if _live is self:
                _live = None
            self._emit(final=True, ok=ok)
            self._progress = None

    @property
    def bar(self) -> bool:
        """Whether this phase draws the live bar."""
        return self._progress is not None

    # --- updates ---------------------------------------------------------------------------

    def update(self, done: int | None = None, *, loss: float | None = None, tokens: int = 0,
               **metrics: Any) -> None:
        """Record progress.

        Args:
            done: Units completed so far (absolute, counting from 0 like ``start``); None keeps
                the count.
            loss: The latest training loss, if any.
            tokens: Tokens processed since the previous update (0: tok/s is not shown).
            **metrics: Extra metrics shown from now on (like :meth:`note`).
        """
        if not self.enabled or self._closed:
            return
        if done is not None:
            self.done = done
        if loss is not None:
            self.loss = float(loss)
        self._tokens += tokens
        self.metrics.update(metrics)
        self._updated = True
        now = time.perf_counter()
        if tokens:
            self._rate_samples.append((now, self._tokens))
            while len(self._rate_samples) > 2 and now - self._rate_samples[1][0] > _BAR_RATE_WINDOW:
                self._rate_samples.popleft()
        if self._progress is not None:
            self._refresh_bar(now)
        finished = self.total is not None and self.done >= self.total
        if not finished and now - self._t_log >= self._interval:
            self._emit(final=False, now=now)

    def advance(self, n: int = 1, **kwargs: Any) -> None:
        """Like :meth:`update` with ``done`` increased by ``n``."""
        self.update(self.done + n, **kwargs)

    def note(self, **metrics: Any) -> None:
        """Extra metrics (e.g. ``val_loss``) shown on the bar and every later line."""
        if not self.enabled or self._closed:
            return
        self.metrics.update(metrics)
        if self._progress is not None:
            self._refresh_bar(time.perf_counter())

    # --- rendering -------------------------------------------------------------------------

    def _bar_rate(self) -> float | None:
        if not self._tokens or len(self._rate_samples) < 2:
            return None
        (t_a, n_a), (t_b, n_b) = self._rate_samples[0], self._rate_samples[-1]
        return (n_b - n_a) / max(t_b - t_a, 1e-9)

    def _refresh_bar(self, now: float) -> None:
        assert self._progress is not None
        rate = self._bar_rate()
        if self.total is not None:
            count = f"{self.done}/{self.total} {self.unit}"
        else:
            count = f"{self.done} {self.unit}" if self._updated else ""
        self._progress.update(
            self._task, completed=self.done, count=count,
            loss="" if self.loss is None else f"loss {self.loss:.4f}",
            rate="" if rate is None else fmt_rate(rate),
            extra=" ".join(f"{k} {_fmt_metric(v)}" for k, v in self.metrics.items()))

    def line(self, final: bool = False, ok: bool = True, now: float | None = None) -> str:
        """The plain progress line (as logged) for the current state."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self._t0
        head = f"{self.name}:"
        if self.total is not None:
            pct = int(100 * self.done / self.total) if self.total else 100
            head += f" {self.unit} {self.done}/{self.total} ({pct}%)"
        elif self._updated:
            head += f" {self.unit} {self.done}"
        if self.loss is not None:
            head += f" loss {self.loss:.4f}"
        parts: list[str] = []
        if self._tokens:
            # Final line: the phase average; otherwise the window since the previous line.
            n, dt = ((self._tokens, elapsed) if final
                     else (self._tokens - self._tokens_log, now - self._t_log))
            parts.append(fmt_rate(n / max(dt, 1e-9)))
        if self.metrics:
            parts.append(" ".join(f"{k} {_fmt_metric(v)}" for k, v in self.metrics.items()))
        parts.append(f"elapsed {fmt_duration(elapsed)}")
        if final:
            parts.append("done" if ok else "stopped")
        elif self.total is not None:
            parts.append(f"ETA {fmt_duration(self._eta(elapsed))}")
        if head.endswith(":"):  # nothing counted (a spinner): "register x: elapsed 4s | done"
            return f"{head} {' | '.join(parts)}"
        return " | ".join([head, *parts])

    def _eta(self, elapsed: float) -> float:
        assert self.total is not None
        progressed = self.done - self.start
        if progressed <= 0:
            return math.inf
        return (self.total - self.done) * elapsed / progressed

    def _emit(self, final: bool, ok: bool = True, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        extra: dict[str, Any] = {BAR_RECORD_ATTR: True} if self._progress is not None else {}
        if self.total is not None:
            extra[DONE_RECORD_ATTR] = Done(self.name, self.unit, self.done, self.total)
        self._log.info("%s", self.line(final=final, ok=ok, now=now), extra=extra or None)
        self._t_log, self._tokens_log = now, self._tokens


def _make_progress(console: Console) -> Progress:
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(finished_text="[green]✓"),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TextColumn("{task.fields[loss]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console, transient=False, refresh_per_second=4)


def phase(name: str, total: int | None = None, start: int = 0, unit: str = "step", *,
          enabled: bool = True, bar: bool | None = None, console: Console | None = None,
          ) -> Phase:
    """A progress phase, to use as ``with progress.phase(...) as p:``.

    Args:
        name: What runs, e.g. ``"pretrain"`` or ``"evaluate: perplexity"``.
        total: Units in the whole phase (e.g. ``max_steps``); None shows a spinner.
        start: Units already done (a resumed run's step).
        unit: The unit's name in the lines, e.g. ``"step"``, ``"batch"``.
        enabled: False makes every call a no-op (e.g. on non-zero ranks).
        bar: Force the live bar on or off; None decides by :func:`interactive`.
        console: The rich console to draw on (default :func:`get_console`).

    Returns:
        The (not yet entered) phase.
    """
    return Phase(name, total, start, unit, enabled=enabled, bar=bar, console=console)


def track(iterable: Iterable[T], name: str, total: int | None = None, unit: str = "item",
          **kwargs: Any) -> Iterator[T]:
    """Yield from ``iterable`` inside a phase that advances by one per item.

    Args:
        iterable: The items.
        name: The phase's name.
        total: The number of items (default ``len(iterable)`` when it has one).
        unit: The unit's name.
        **kwargs: More :func:`phase` arguments.

    Yields:
        The items of ``iterable``.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with phase(name, total=total, unit=unit, **kwargs) as p:
        for item in iterable:
            yield item
            p.advance()
