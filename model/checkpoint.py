"""Checkpoints with three verbs (load, save, close): weights, optimizer, scheduler, RNG, data position.

Layout under the run dir:

    checkpoints/latest              name of the newest checkpoint (replaced atomically)
    checkpoints/step-NNNNNNNN/
      manifest.json                 format ("full" or "sharded") and the size of every other file; written last
      trainer_state.pt              scheduler, RNG of every rank, counters (step = the data position);
                                    in the full format also the optimizer state
      config.json, processor files  the model's config and processor
      model.safetensors             full format (one process, DDP): the directory is a loadable model dir
      sharded/.metadata             sharded format (FSDP, more than one worker): a torch.distributed.checkpoint
      sharded/__R_0.distcp          of {"model", "optimizer"}; rank R writes only its own parameter and AdamW
                                    shards, and on resume reads only the slices it owns (any worker count)
    final/                          the stage's result, a loadable model dir (the next stage's init, eval)

A checkpoint is written to `step-N.tmp` and renamed, so a kill mid-save never leaves a half
checkpoint behind `latest` (sharded: the run dir must be on a file system every rank shares, as
Ray Train's storage already is). What the rename cannot catch (a truncated copy, a full disk on a
network file system, a partial sync) the manifest does: on resume every file's size is checked and
a checkpoint that does not match is skipped, with a log line, for the previous complete one.

final/ under FSDP is gathered once, at the end of the stage, to rank 0's CPU (`cpu_offload`: one
parameter at a time passes through the device) and saved as safetensors. A sharded checkpoint of a
run that never reached its end becomes a model dir with `python -m model.checkpoint consolidate
RUN/checkpoints/step-N OUT` (DCP reads the shards in one process, no GPU; then save_pretrained).
Checkpoints written before manifests existed (full format) still load.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

log = logging.getLogger("janus_forge.checkpoint")

STATE_FILE = "trainer_state.pt"
MANIFEST = "manifest.json"
SHARDED_DIR = "sharded"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class CheckpointError(RuntimeError):
    """Checkpoints exist but none is complete; the message lists what is wrong with each."""


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


def write_manifest(path: Path, fmt: str) -> None:
    files = {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
    (path / MANIFEST).write_text(json.dumps({"format": fmt, "files": files}, indent=1))


def _legacy(path: Path) -> bool:
    """A full checkpoint written before manifests existed (renamed into place whole, so complete)."""
    return not (path / MANIFEST).exists() and (path / STATE_FILE).is_file() and (path / "model.safetensors").is_file()


def incomplete(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint (missing manifest, missing or resized file), or None."""
    if _legacy(path):
        return None
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        return f"no readable {MANIFEST} ({err.__class__.__name__})"
    for name, size in manifest["files"].items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {size}"
    return None


def checkpoint_format(path: Path) -> str:
    return "full" if _legacy(path) else json.loads((path / MANIFEST).read_text())["format"]


class Checkpointer:
    """`sharded` picks the format saves use (FSDP over more than one worker); loads read either."""

    def __init__(self, run_dir: Path, keep: int = 2, sharded: bool = False):
        self.root = Path(run_dir) / "checkpoints"
        self.final = Path(run_dir) / "final"
        self.keep = keep
        self.sharded = sharded

    def latest(self) -> Path | None:
        """The newest complete checkpoint at or before `latest`; None when there is none at all."""
        marker = self.root / "latest"
        if not marker.is_file():
            return None
        newest = marker.read_text().strip()
        problems = []
        for path in sorted((p for p in self.root.glob("step-*") if p.suffix != ".tmp" and p.name <= newest), reverse=True):
            problem = incomplete(path)
            if problem is None:
                if problems:
                    log.warning("checkpoint %s is incomplete; resuming from the previous complete one, %s", "; ".join(problems), path)
                return path
            problems.append(f"{path.name}: {problem}")
        raise CheckpointError(f"{self.root}: no complete checkpoint ({'; '.join(problems) or 'latest names ' + newest})")

    def load(self, module: torch.nn.Module, optimizer, scheduler, path: Path) -> TrainState:
        """Optimizer, scheduler, RNG and counters from `path`, and for a sharded checkpoint the weights
        too (a full checkpoint's weights were loaded with the model, from the same directory)."""
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        if checkpoint_format(path) == "sharded":
            shards = {"model": get_model_state_dict(module), "optimizer": get_optimizer_state_dict(module, optimizer)}
            dcp.load(shards, checkpoint_id=path / SHARDED_DIR)  # in place, each rank its own slices
            set_model_state_dict(module, shards["model"])
            set_optimizer_state_dict(module, optimizer, shards["optimizer"])
        else:
            set_optimizer_state_dict(module, optimizer, state["optimizer"], options=FULL)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][min(_rank(), len(state["rng"]) - 1)])
        return TrainState(**state["train"])

    def save(self, module: torch.nn.Module, model, processor, optimizer, scheduler, train: TrainState) -> Path:
        """Every rank joins (the full format's gathers, or DCP's per-rank writes); rank 0 renames."""
        rngs = [None] * dist.get_world_size() if dist.is_initialized() else [rng_state()]
        if dist.is_initialized():
            dist.all_gather_object(rngs, rng_state())
        path = self.root / f"step-{train.step:08d}"
        tmp = path.with_suffix(".tmp")
        state = {"scheduler": scheduler.state_dict(), "rng": rngs, "train": vars(train)}
        if self.sharded:
            if _rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            _barrier()
            dcp.save({"model": get_model_state_dict(module), "optimizer": get_optimizer_state_dict(module, optimizer)},
                     checkpoint_id=tmp / SHARDED_DIR)
        else:
            weights = get_model_state_dict(module, options=FULL)
            state["optimizer"] = get_optimizer_state_dict(module, optimizer, options=FULL)
        if _rank() == 0:
            if self.sharded:
                model.config.save_pretrained(tmp)
                processor.save_pretrained(tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
                _save_model(model, processor, {_strip(k): v for k, v in weights.items()}, tmp)
            torch.save(state, tmp / STATE_FILE)
            write_manifest(tmp, "sharded" if self.sharded else "full")
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
            _write_atomic(self.root / "latest", path.name)
            for old in sorted(self.root.glob("step-*"))[: -self.keep]:
                if old != path and old.suffix != ".tmp":
                    shutil.rmtree(old)
        _barrier()
        return path

    def save_final(self, module: torch.nn.Module, model, processor) -> Path:
        weights = get_model_state_dict(module, options=FULL)  # FSDP: gathered once, onto rank 0's CPU
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


def consolidate(checkpoint: Path, out_dir: Path) -> Path:
    """A sharded checkpoint as a loadable model dir (config, processor, model.safetensors); one process.

    DCP reads the "model" entries only (not the optimizer), assembling each tensor from its rank
    shards straight into the model's own: one copy of the weights in memory."""
    from transformers import AutoConfig, JanusForConditionalGeneration, JanusProcessor

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if (problem := incomplete(checkpoint)) is not None:
        raise CheckpointError(f"{checkpoint}: {problem}")
    if checkpoint_format(checkpoint) != "sharded":
        raise CheckpointError(f"{checkpoint} is a full checkpoint: it is already a model dir")
    config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    model = JanusForConditionalGeneration._from_config(config, dtype=torch.float32)
    # the trainer saved the loss wrapper's keys: `model.` + the model's own
    weights = {"model": {f"model.{k}": v for k, v in model.state_dict().items()}}
    dcp.load(weights, checkpoint_id=checkpoint / SHARDED_DIR)  # no process group: one process reads all shards
    _save_model(model, JanusProcessor.from_pretrained(checkpoint, local_files_only=True), None, out_dir)
    return out_dir


def _strip(key: str) -> str:
    # Keys come as the loss wrapper's (`model.` + the model's own name), DDP may add `module.`.
    return key.removeprefix("module.").removeprefix("model.")


def _save_model(model, processor, weights: dict[str, torch.Tensor] | None, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, state_dict=weights)
    processor.save_pretrained(path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp-write")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Consolidate a sharded (DCP) checkpoint into a loadable model dir.")
    sub = parser.add_subparsers(dest="verb", required=True)
    cmd = sub.add_parser("consolidate")
    cmd.add_argument("checkpoint", type=Path, help="RUN/checkpoints/step-NNNNNNNN")
    cmd.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    print(consolidate(args.checkpoint, args.out_dir))
