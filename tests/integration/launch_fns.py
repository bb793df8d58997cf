"""Module-level functions for ``gpt.launch.run`` to spawn in tests (spawned ranks import them)."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from gpt.errors import DataError


def sum_of_ranks(scale: int) -> dict[str, int]:
    """All-reduce each rank's number: proves one world of joined processes."""
    t = torch.tensor([dist.get_rank() * scale])
    dist.all_reduce(t)
    logging.getLogger("gpt.test").warning("rank %d says hello", dist.get_rank())
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": int(t)}


def bad_input_on_rank1() -> None:
    if dist.get_rank() == 1:
        raise DataError("data/tokens/train.bin is empty; re-run gptops data tokenize")
    dist.barrier()  # rank 0 waits: the launcher must stop it when rank 1 fails
