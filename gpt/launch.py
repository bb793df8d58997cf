"""Training steps over several processes, started by torch's own elastic launcher.

:func:`run` calls a step's training function in this process when one process is wanted (the
default, unchanged), and otherwise starts ``launch.nproc_per_node`` processes on this machine with
``torch.distributed.launcher.api.elastic_launch``, the engine behind ``torchrun``. The caller is
not one of the ranks: it relays their log lines into its own log (``[rank1] ...``, so a Prefect
task shows them in its run log), returns rank 0's result, and turns a failed rank into one error
naming it ("pretrain: rank 1 of 2 failed: Signal 9 (SIGKILL) ..."). An input error raised in a
rank (``ConfigError``, ``DataError``, ...) is raised again as the same type, so it is not retried.

With ``launch.nnodes > 1`` every machine runs the same step with its own ``launch.node_rank``; the
static rendezvous at ``launch.rdzv_endpoint`` (node 0's host:port) makes node 0's first process
global rank 0, so node 0 records the step and the others only lend their processes. All nodes
must see the workspace (shared storage): checkpoints and data are read from it.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt import errors, progress
from gpt.config import LaunchConfig
from gpt.errors import ConfigError, GptopsError, RankFailed

log = logging.getLogger(__name__)

#: How a rank writes its log lines, so the launcher can give each its level back.
_RANK_FORMAT = "%(levelname)s\t%(name)s\t%(message)s"
_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class World:
    """How many processes a step trains on: ``nproc`` here, ``nnodes`` machines."""

    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    endpoint: str = ""
    strategy: str = "ddp"

    @property
    def size(self) -> int:
        return self.nproc * self.nnodes

    @classmethod
    def of(cls, launch: LaunchConfig, batch_size: int, param: str) -> World:
        """The world for a step whose global batch is ``batch_size`` rows (``param``).

        ``auto`` is one process per visible GPU (1 without a GPU), lowered to the largest count
        that divides the batch; an explicit count that does not divide it is refused now.
        """
        n = launch.nproc_per_node
        if n == "auto":
            visible = gpus() if launch.device in ("auto", "cuda") else 0
            n = max((k for k in range(1, max(visible, 1) + 1)
                     if batch_size % (k * launch.nnodes) == 0), default=1)
            if visible > n:
                log.info("launch.nproc_per_node=auto: %d of %d GPUs (%s=%d must divide by the "
                         "process count)", n, visible, param, batch_size)
        world = cls(n, launch.nnodes, launch.node_rank, launch.rdzv_endpoint, launch.strategy)
        if batch_size % world.size:
            raise ConfigError(f"{param}={batch_size} is not a multiple of the {world.size} "
                              f"training processes (launch.nproc_per_node x launch.nnodes): set "
                              f"{param} to a multiple of {world.size} (it is the global batch)")
        return world


def _config(world: World, run_id: str, log_dir: Path):
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig

    common = dict(nproc_per_node=world.nproc, run_id=run_id, max_restarts=0,
                  start_method="spawn", monitor_interval=0.2,
                  logs_specs=DefaultLogsSpecs(log_dir=str(log_dir), redirects=Std.ALL))
    if world.nnodes == 1:
        return LaunchConfig(min_nodes=1, max_nodes=1, rdzv_backend="c10d",
                            rdzv_endpoint="localhost:0", **common)
    return LaunchConfig(min_nodes=world.nnodes, max_nodes=world.nnodes, rdzv_backend="static",
                        rdzv_endpoint=world.endpoint,
                        rdzv_configs={"rank": world.node_rank, "timeout": 900}, **common)


def _rank_entry(job: Job, kwargs: dict[str, Any]) -> Any:
    """What each launched process runs: log to stderr for the relay, join, call ``job.fn``."""
    import torch

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_RANK_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    if not torch.cuda.is_available():  # share the CPU cores between this machine's ranks
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    from gpt import distributed
    from gpt.train import resolve_device

    group = distributed.join(resolve_device(job.device))
    logging.getLogger(__name__).info("%s: rank %d of %d is pid %d on %s", job.label,
                                     distributed.rank(), distributed.world(), os.getpid(),
                                     group.device)
    result = job.fn(**kwargs)  # on an error, no barrier: the launcher stops the other ranks
    group.leave()
    return result if distributed.rank() == 0 else None


class _Relay:
    """Tails every rank's stdout/stderr files under ``log_dir`` into ``log``, rank-prefixed."""

    def __init__(self, log_dir: Path, first_rank: int) -> None:
        self.log_dir, self.first_rank = log_dir, first_rank
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, str] = {}
        self._stop = threading.Event()
        ctx = contextvars.copy_context()  # a Prefect task's run context, so its log gets them
        self._thread = threading.Thread(target=ctx.run, args=(self._loop,), daemon=True,
                                        name="gptops-rank-logs")

    def __enter__(self) -> _Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._poll(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self._poll()

    def _poll(self, final: bool = False) -> None:
        for path in sorted(self.log_dir.glob("*/attempt_*/*/std*.log")):
            with path.open("rb") as fh:
                fh.seek(self._offsets.get(path, 0))
                chunk = fh.read()
                self._offsets[path] = fh.tell()
            text = self._partial.pop(path, "") + chunk.decode("utf-8", "replace")
            lines = text.split("\n")
            if not final:
                self._partial[path] = lines.pop()
            rank = self.first_rank + int(path.parent.name)
            for line in lines:
                self._emit(rank, line)

    @staticmethod
    def _emit(rank: int, line: str) -> None:
        line = line.rstrip("\r")
        if not line.strip():
            return
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0] in _LEVELS:
            # Rank 0's progress lines keep their count (a handler follows the step by it).
            done = progress.parse_line(parts[2]) if rank == 0 and parts[1] == progress.log.name \
                else None
            log.log(logging.getLevelName(parts[0]), "[rank%d] %s", rank, parts[2],
                    extra={progress.DONE_RECORD_ATTR: done} if done else None)
        else:  # torch's own prints, tracebacks
            log.info("[rank%d] %s", rank, line)


def _first_line(failure: Any) -> str:
    message = failure.message  # the error file's {"message": "Type: text", ...} or a string
    if isinstance(message, dict):
        message = message.get("message", "")
    message = str(message or f"exit code {failure.exitcode}").strip()
    return message.splitlines()[0] if message else ""


def _input_error(failure: Any) -> GptopsError | None:
    """The rank's own input error (``DataError: ...``), rebuilt, if that is what it died of."""
    kind, _, text = _first_line(failure).partition(": ")
    cls = getattr(errors, kind, None)
    return cls(text) if isinstance(cls, type) and issubclass(cls, GptopsError) else None


def _error(label: str, world: World, exc: Exception) -> Exception:
    """One error for a failed launch: the cause, not the ranks that died of it.

    When one rank fails the others fail after it (a broken connection) or are stopped, so an
    input error wins, then the earliest failure, then the lowest rank.
    """
    failures = getattr(exc, "failures", None)
    if not failures:
        return RankFailed(f"{label}: the launch of {world.size} processes failed: {exc}")
    for _, failure in sorted(failures.items()):
        if (err := _input_error(failure)) is not None:
            return err  # raised again as itself: an input error is not retried
    rank, failure = min(failures.items(), key=lambda kv: (kv[1].timestamp, kv[0]))
    return RankFailed(f"{label}: rank {rank} of {world.size} failed: {_first_line(failure)}; "
                      "a re-run resumes from the last checkpoint")


@dataclass(frozen=True)
class Job:
    """A step's training function and the processes it runs on (see :func:`run`)."""

    label: str  #: the step, in log lines and errors ("pretrain")
    run_id: str  #: names the rendezvous (the step key: every node must train the same step)
    world: World
    device: str  #: ``launch.device``, joined by each process
    fn: Callable[..., Any]  #: module level: the ranks are started with ``spawn``


def run(job: Job, **kwargs: Any) -> Any:
    """``job.fn(**kwargs)`` on ``job.world``'s processes; rank 0's result (None on nodes other
    than 0). ``kwargs`` must be picklable (plain values, dataclasses): the ranks are spawned.
    """
    world, label = job.world, job.label
    if world.size == 1:
        return job.fn(**kwargs)
    from torch.distributed.launcher.api import elastic_launch

    with tempfile.TemporaryDirectory(prefix="gptops-ranks-") as tmp:
        config = _config(world, re.sub(r"[^A-Za-z0-9_-]", "-", f"{label}-{job.run_id}"),
                         Path(tmp))
        where = (f"{world.nproc} processes" if world.nnodes == 1 else
                 f"{world.nproc} processes on node {world.node_rank} of {world.nnodes} "
                 f"(rendezvous {world.endpoint})")
        log.info("%s: launching %s (%s, torch elastic launcher)", label, where, world.strategy)
        t0 = time.perf_counter()
        try:
            with _Relay(Path(tmp), world.node_rank * world.nproc):
                results = elastic_launch(config, _rank_entry)(job, kwargs)
        except Exception as exc:  # ChildFailedError, rendezvous errors
            raise _error(label, world, exc) from exc
        log.info("%s: %d processes finished in %.1f s", label, world.nproc,
                 time.perf_counter() - t0)
    return results.get(0) if world.node_rank == 0 else None
