"""Device, precision and data-parallel wrapping of the loss module, in one place (no Ray here).

FSDP (recipe `fsdp: true`, more than one worker) never materialises the whole model on a device,
nor on more than one host process. Rank 0 alone reads the weights (into host memory); the other
ranks build the model on the meta device (no storage). `fully_shard` is applied one decoder layer
at a time: on rank 0 FSDP2 moves that layer to the device, keeps its 1/world slice and frees the
rest before the next layer moves; the other ranks then allocate only their shards and receive
their slices from rank 0, one tensor at a time. Peak device memory while sharding is a rank's
shards plus one whole layer (for the root's own parameters - embeddings, vision tower, heads - it
is those, whole, once): a 7B fp32 model (28 GB) never lands on one 40 GB card, and a node of 8
ranks holds one host copy, not 8. The frozen VQ model stays whole on every rank (it encodes
images in the loader thread).
"""

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


def sharded(world: World, fsdp: bool) -> bool:
    """True when parameters (and so checkpoints) are split across ranks."""
    return fsdp and world.size > 1


def decoder_layers(module: nn.Module) -> nn.ModuleList:
    return module.model.model.language_model.layers


def parallelize(module: nn.Module, world: World, fsdp: bool, activation_checkpointing: bool = False) -> nn.Module:
    """DDP for models a GPU holds; FSDP2 (per decoder layer, then the root) for those it does not."""
    if activation_checkpointing:
        # Per decoder layer (transformers' GradientCheckpointingLayer): keep each layer's input,
        # recompute its activations in backward. The layer's `forward` is checkpointed, so FSDP2's
        # module hooks (all-gather, reduce-scatter) stay outside and run once.
        module.model.model.language_model.activation_checkpointing_enable({"use_reentrant": False})
    if not sharded(world, fsdp):
        module.to(world.device)
        return module if world.size == 1 else _ddp(module, world)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    # The VQ model is frozen and runs outside the training forward (on-the-fly encoding in
    # the loader thread, sample decoding): keep it whole on every rank.
    vq = module.model.model.vqmodel
    whole = module.state_dict() if world.main else {}  # rank 0's host copy; other ranks are on meta
    for layer in decoder_layers(module):
        fully_shard(layer)  # moves this layer to the device, then keeps only this rank's shard there
    root = fully_shard(module, ignored_params=set(vq.parameters()))
    if any(p.is_meta for p in root.parameters()):
        root.to_empty(device=world.device)  # storage for this rank's shards (and the VQ) only
    vq.to(world.device)  # ignored by FSDP, so not moved by it
    # Every rank receives its slices of rank 0's weights (one tensor at a time through the device)
    # and all buffers, the non-persistent ones (rotary frequencies) included.
    set_model_state_dict(root, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in root.buffers():
        dist.broadcast(buffer, src=0)
    return root


def _ddp(module: nn.Module, world: World) -> nn.Module:
    ids = [world.device.index] if world.device.type == "cuda" else None
    # A step may hold no rows of a task (e.g. no understanding rows): its modules get no
    # gradient on that rank, which DDP must be told about.
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def no_sync(module: nn.Module, last: bool):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP2) on all but the last micro-batch
    of a step: gradients accumulate locally (FSDP: unsharded, in fp32) and are reduced once."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if last else module.no_sync()
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(last)  # recurses into the per-layer FSDP modules
    return contextlib.nullcontext()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values
