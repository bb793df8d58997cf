"""Data-parallel training inside one process of a ``torch.distributed`` world.

A process joins the world when it was started by torch's launcher (``torchrun`` or
:func:`gpt.launch.launch`, which set ``WORLD_SIZE``/``RANK``): NCCL on CUDA, gloo on CPU. The
model is wrapped for ``launch.strategy`` (``ddp``: one full copy per process; ``fsdp``: parameters
sharded across processes with FSDP2's ``fully_shard``).

**The global batch does not depend on the number of processes.** Each optimizer step trains on
``batch_size × grad_accum`` sequences, drawn from (seed, step, micro-batch) exactly as in one
process; process ``r`` of ``W`` takes rows ``[r·B/W, (r+1)·B/W)`` of every micro-batch, so ``W``
must divide the batch size. The gradients are averaged across processes, so 1 and W processes
compute the same step up to the order of floating-point reductions, a step key does not depend
on the hardware, and a checkpoint written by W processes resumes on any other number.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from gpt.errors import ConfigError
from gpt.kinds import BASE


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launched() -> bool:
    """True in a process started by torch's launcher as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rows(batch_size: int, param: str = BASE.batch_key) -> slice:
    """This process's rows of a global batch of ``batch_size`` rows."""
    w, r = world(), rank()
    if batch_size % w:
        raise ConfigError(f"{param}={batch_size} is not a multiple of the {w} training "
                          f"processes: set {param} to a multiple of {w} (it is the global batch)")
    per = batch_size // w
    return slice(r * per, (r + 1) * per)


@dataclass
class Group:
    """This process's place in the world; ``joined`` when :func:`join` created the group."""

    device: torch.device
    joined: bool

    def leave(self) -> None:
        """Wait for every process (so the final weights exist for all), then leave."""
        if self.joined:
            dist.barrier()
            dist.destroy_process_group()


def join(device: torch.device) -> Group:
    """Join the launcher's process group (NCCL on CUDA, gloo on CPU), or stay alone.

    On CUDA each process takes the GPU of its ``LOCAL_RANK``. ``joined`` is False when the group
    exists already (the launcher's entry joined it and will leave it).
    """
    if not launched():
        return Group(device, False)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return Group(device, False)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Group(device, True)


def wrap(model: nn.Module, device: torch.device, strategy: str = "ddp") -> nn.Module:
    """``model`` ready for this world: unchanged alone, else DDP or FSDP2-sharded.

    FSDP2 shards each transformer block, then the rest; the returned module is ``model``
    itself (``fully_shard`` changes it in place), so use :func:`full_state_dict` to save. Create
    the optimizer after this call (sharding replaces the parameters).
    """
    if world() == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(getattr(model, "transformer", model), "h", []):
            fully_shard(block)
        fully_shard(model)
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def is_sharded(model: nn.Module) -> bool:
    """True for a model :func:`wrap` sharded with FSDP. A process that never imported FSDP holds
    no sharded model, and is spared the import (1.7 s: it pulls in ``torch._dynamo``)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole sharded model's weights on CPU, gathered from every process.

    A collective: every process calls it; only rank 0's result is complete.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options())


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The sharded model's optimizer state, whole and keyed by parameter name (collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options())


def load_full_state(model: nn.Module, weights: dict[str, torch.Tensor] | None,
                    optimizer: torch.optim.Optimizer | None = None,
                    optimizer_state: dict | None = None) -> None:
    """Load whole-model weights (None: the model has them already) and a name-keyed optimizer
    state into a sharded or plain model: each process keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    if weights is not None:
        set_model_state_dict(model, weights, options=options)
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def average(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the world (in place)."""
    if world() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.AVG)
    return value


def digests(model: nn.Module) -> list[str]:
    """Every process's sha256 of its weights, in rank order ([] alone or when sharded).

    A collective: every process calls it. DDP keeps the copies equal; this checks it.
    """
    if world() == 1 or is_sharded(model):
        return []
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    out: list[str | None] = [None] * world()
    dist.all_gather_object(out, h.hexdigest())
    return [str(d) for d in out]
