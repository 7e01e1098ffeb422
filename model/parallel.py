"""Device, precision and data-parallel wrapping of the loss module, in one place (no Ray here)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> World:
        """The process group Ray Train (or torchrun) set up, else a single CPU/GPU process."""
        if dist.is_available() and dist.is_initialized():
            rank, size = dist.get_rank(), dist.get_world_size()
        else:
            rank, size = 0, 1
        if torch.cuda.is_available():
            local = torch.cuda.current_device() if size > 1 else 0
            return cls(rank, size, torch.device("cuda", local))
        return cls(rank, size, torch.device("cpu"))


def autocast(precision: str, device: torch.device):
    """The recipe's compute dtype: bf16 autocast over the fp32 weights, or plain fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def parallelize(module: nn.Module, world: World, fsdp: bool) -> nn.Module:
    """DDP for models a GPU holds; FSDP2 (per decoder layer, then the root) for those it does not."""
    module.to(world.device)
    if world.size == 1:
        return module
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        # The VQ model is frozen and runs outside the training forward (on-the-fly encoding in
        # the loader thread, sample decoding): keep it whole on every rank.
        vq = set(module.model.model.vqmodel.parameters())
        for layer in module.model.model.language_model.layers:
            fully_shard(layer)
        return fully_shard(module, ignored_params=vq)
    ids = [world.device.index] if world.device.type == "cuda" else None
    # A step may hold no rows of a task (e.g. no understanding rows): its modules get no
    # gradient on that rank, which DDP must be told about.
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def no_sync(module: nn.Module, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if last or not isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values
