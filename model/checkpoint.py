"""Checkpoints with three verbs (load, save, close): safetensors weights + optimizer, scheduler, RNG, data position.

Layout under the run dir: checkpoints/step-NNNNNNNN/ (a loadable model dir: config, processor,
model.safetensors, plus trainer_state.pt), checkpoints/latest (name of the newest complete
one), final/ (the stage's result: the next stage's init). A checkpoint is written to a
`.tmp` dir and renamed, so a kill mid-save never leaves a half checkpoint behind `latest`.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

STATE_FILE = "trainer_state.pt"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class TrainState:
    """The trainer's own counters: they are part of the checkpoint (torchtitan style)."""

    step: int = 0  # optimizer steps done == global batches consumed (the data position)
    rows_seen: int = 0
    tokens_seen: int = 0


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    def __init__(self, run_dir: Path, keep: int = 2):
        self.root = Path(run_dir) / "checkpoints"
        self.final = Path(run_dir) / "final"
        self.keep = keep

    def latest(self) -> Path | None:
        marker = self.root / "latest"
        if not marker.is_file():
            return None
        path = self.root / marker.read_text().strip()
        return path if (path / STATE_FILE).is_file() else None

    def load(self, module: torch.nn.Module, optimizer, scheduler, path: Path) -> TrainState:
        """Optimizer, scheduler, RNG and counters from `path`; the weights were loaded with the model."""
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        set_optimizer_state_dict(module, optimizer, state["optimizer"], options=FULL)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][min(_rank(), len(state["rng"]) - 1)])
        return TrainState(**state["train"])

    def save(self, module: torch.nn.Module, model, processor, optimizer, scheduler, train: TrainState) -> Path:
        """Every rank joins the state-dict gathers; rank 0 writes."""
        weights = get_model_state_dict(module, options=FULL)
        optim = get_optimizer_state_dict(module, optimizer, options=FULL)
        rngs = [None] * dist.get_world_size() if dist.is_initialized() else [rng_state()]
        if dist.is_initialized():
            dist.all_gather_object(rngs, rng_state())
        path = self.root / f"step-{train.step:08d}"
        if _rank() == 0:
            tmp = path.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            _save_model(model, processor, {_strip(k): v for k, v in weights.items()}, tmp)
            torch.save({"optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rngs,
                        "train": vars(train)}, tmp / STATE_FILE)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
            _write_atomic(self.root / "latest", path.name)
            for old in sorted(self.root.glob("step-*"))[: -self.keep]:
                if old != path and old.suffix != ".tmp":
                    shutil.rmtree(old)
        _barrier()
        return path

    def save_final(self, module: torch.nn.Module, model, processor) -> Path:
        weights = get_model_state_dict(module, options=FULL)
        if _rank() == 0:
            tmp = self.final.with_name("final.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            _save_model(model, processor, {_strip(k): v for k, v in weights.items()}, tmp)
            old = self.final.with_name("final.old")
            if self.final.exists():  # a resumed run that trained further replaces its final model
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.final, old)
            os.replace(tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return self.final

    def close(self) -> None:
        """Remove half-written checkpoints (a kill between mkdir and rename)."""
        if _rank() == 0:
            for tmp in self.root.glob("*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)


def _strip(key: str) -> str:
    # Keys come as the loss wrapper's (`model.` + the model's own name), DDP may add `module.`.
    return key.removeprefix("module.").removeprefix("model.")


def _save_model(model, processor, weights: dict[str, torch.Tensor], path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, state_dict=weights)
    processor.save_pretrained(path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp-write")
    tmp.write_text(text)
    os.replace(tmp, path)
