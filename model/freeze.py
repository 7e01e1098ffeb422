"""Stage freezing (paper Table 2): which module groups of a Janus model train in a stage."""

from __future__ import annotations

from typing import Callable

from torch import nn

from model.config import MODULE_GROUPS

# Registry: recipe group name -> the submodule of JanusForConditionalGeneration it names.
GROUPS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "vision_model": lambda m: m.model.vision_model,
    "aligner": lambda m: m.model.aligner,
    "vqmodel": lambda m: m.model.vqmodel,
    "generation_embeddings": lambda m: m.model.generation_embeddings,
    "generation_aligner": lambda m: m.model.generation_aligner,
    "generation_head": lambda m: m.model.generation_head,
    "language_model": lambda m: m.model.language_model,
    "lm_head": lambda m: m.lm_head,
}
assert tuple(GROUPS) == MODULE_GROUPS


def apply_freezing(model: nn.Module, trainable: list[str]) -> dict[str, int]:
    """Freeze everything, then unfreeze the named groups; returns trainable parameter counts per group.

    Every parameter must belong to a group, so a new submodule cannot train (or freeze) unnoticed.
    """
    grouped = {id(p) for build in GROUPS.values() for p in build(model).parameters()}
    stray = [n for n, p in model.named_parameters() if id(p) not in grouped]
    if stray:
        raise ValueError(f"parameters outside every module group: {stray[:5]}")
    model.requires_grad_(False)
    for name in trainable:
        GROUPS[name](model).requires_grad_(True)  # tied weights train if any owner trains
    return {name: sum(p.numel() for p in GROUPS[name](model).parameters() if p.requires_grad) for name in GROUPS}


def set_train_mode(model: nn.Module, trainable: list[str]) -> None:
    """Trainable groups in train mode, frozen ones in eval (the VQ model always is, as upstream)."""
    model.eval()
    for name in trainable:
        if name != "vqmodel":
            GROUPS[name](model).train()
