"""Process pools for per-file and per-shard data work (web extraction, cleaning's first pass).

Workers are spawned (not forked: torch and threads in the parent), ignore Ctrl-C (the parent
stops the pool) and number one per core unless ``GPTOPS_DATA_WORKERS`` says otherwise.
"""

from __future__ import annotations

import os
import signal


def default_workers() -> int:
    """Processes for the per-shard work: every core (``GPTOPS_DATA_WORKERS`` overrides)."""
    env = os.environ.get("GPTOPS_DATA_WORKERS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


def ignore_ctrl_c() -> None:
    """In a pool worker: Ctrl-C reaches the whole terminal group; the parent stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
