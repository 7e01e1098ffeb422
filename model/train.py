"""The Janus-Pro stage trainer: one recipe, one stage; one process, or one Ray Train worker of many."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_constant_schedule_with_warmup

from model.checkpoint import CheckpointError, Checkpointer, TrainState, checkpoint_format
from model.config import TrainRecipe
from model.data import Encoder
from model.freeze import apply_freezing, set_train_mode
from model.generate import encode_image_tokens
from model.loader import Loader, StepData
from model.losses import JanusLoss, combine
from model.metrics import MetricsLog, StepCost, cost_summary, ratio_drift, save_loss_plot
from model.parallel import World, all_reduce_sum, autocast, no_sync, parallelize, sharded
from model.shards import ShardSet
from model.tiny import check_model_dir, load_janus, load_janus_empty
from pipeline.schema import TASKS

log = logging.getLogger("janus_forge.train")

# Weights, gradients and AdamW state are fp32 whatever dtype the checkpoint was saved in: the
# published Janus-Pro weights are bf16, whose 8-bit mantissa cannot hold stage III's 4e-5 step for
# most weights (it rounds away). The recipe's `precision` is only the compute dtype (autocast).
# Checkpoints and final/ are written from these weights, so they are fp32 too: a resume continues
# exactly, and the next stage starts from what this one trained.
MASTER_DTYPE = torch.float32


class TrainingError(RuntimeError):
    """Training stopped; the message says why and which checkpoint is the last good one."""


def resolve_init(path: Path) -> Path:
    """A base model dir, or a previous stage's run dir (its `final/` is the model)."""
    path = Path(path)
    return check_model_dir(path / "final" if (path / "final" / "config.json").is_file() else path)


def preflight(recipe: TrainRecipe, out_dir: Path, resume: bool, world: int) -> ShardSet:
    """Everything that can be checked before a model is loaded; raises with a clear message."""
    done = [p.name for p in (out_dir / "checkpoints", out_dir / "final") if p.exists()]
    if done and not resume:
        raise TrainingError(f"{out_dir} already holds a run ({', '.join(done)}); pass --resume or choose another --out")
    resolve_init(recipe.init)
    shards = ShardSet.open(recipe.data.dir, recipe.data.stage)
    shards.check_ratio(recipe.ratio)
    if recipe.batch.size % (world * recipe.batch.micro):
        raise TrainingError(f"{recipe.path}: batch.size {recipe.batch.size} is not a multiple of "
                            f"workers ({world}) x batch.micro ({recipe.batch.micro})")
    mixed_ratio = shards.manifest.get("ratio") or {}
    if mixed_ratio and sum(mixed_ratio.values()) > 0:
        total = sum(mixed_ratio.values())
        off = {t: round(mixed_ratio.get(t, 0) / total, 3) for t in TASKS if abs(mixed_ratio.get(t, 0) / total - recipe.share(t)) > 1e-6}
        if off:
            log.warning("shards were mixed with ratio %s, the recipe asks %s: per-step drift will show it", mixed_ratio, recipe.ratio)
    mixed = shards.manifest.get("global_batch")
    if mixed and mixed != recipe.batch.size:
        log.warning("shards were mixed in batches of %s rows, the recipe steps %s rows: the per-step ratio drifts",
                    mixed, recipe.batch.size)
    return shards


class Trainer:
    def __init__(self, recipe: TrainRecipe, out_dir: Path, resume: bool = False, device: torch.device | None = None):
        self.recipe, self.out = recipe, Path(out_dir)
        world = World.current()
        self.world = World(world.rank, world.size, device or world.device)
        self.shards = preflight(recipe, self.out, resume, self.world.size)
        self.out.mkdir(parents=True, exist_ok=True)
        self.sharded = sharded(self.world, recipe.fsdp)
        self.checkpointer = Checkpointer(self.out, keep=recipe.keep_checkpoints, sharded=self.sharded)
        try:
            resume_from = self.checkpointer.latest() if resume else None
        except CheckpointError as err:
            raise TrainingError(str(err)) from None
        torch.manual_seed(recipe.seed)
        # A full checkpoint is a model dir; a sharded one holds weights only as DCP shards, which
        # Checkpointer.load reads into the sharded model built from the init's architecture.
        full = resume_from is not None and checkpoint_format(resume_from) == "full"
        # FSDP: only rank 0 reads the weights; the others get their shards from it (model/parallel.py).
        load = load_janus if self.world.main or not self.sharded else load_janus_empty
        self.model, self.processor = load(resume_from if full else resolve_init(recipe.init), dtype=MASTER_DTYPE)
        self.trainable = apply_freezing(self.model, recipe.trainable)
        log.info("stage %s trains %s", recipe.stage, {g: n for g, n in self.trainable.items() if n})
        self.module = parallelize(JanusLoss(self.model, touch_all=self.sharded), self.world, recipe.fsdp,
                                  recipe.activation_checkpointing)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        o = recipe.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.scheduler = get_constant_schedule_with_warmup(self.optimizer, recipe.schedule.warmup_steps)
        self.state = TrainState()
        if resume_from is not None:
            self.state = self.checkpointer.load(self.module, self.optimizer, self.scheduler, resume_from)
        self.encoder = Encoder(self.processor, recipe.data.max_seq_len, recipe.cfg_drop, recipe.seed,
                               self.model.config.vision_config.num_image_tokens)
        self.metrics = MetricsLog(self.out / "train.jsonl", self.state.step if resume else None) if self.world.main else None
        self.cost = StepCost(self.model.config, {g for g, n in self.trainable.items() if n}, recipe.precision,
                             self.world.device, self.world.size, recipe.peak_tflops)
        if self.world.main:
            (self.out / "recipe.json").write_text(recipe.model_dump_json(indent=2))

    def train(self) -> Path:
        """Run the stage to `schedule.steps`, checkpointing on the way; returns the final model dir."""
        steps, start = self.recipe.schedule.steps, self.state.step
        loader = self.loader(start)
        bar = tqdm(total=steps, initial=start, desc=self.recipe.name, disable=not self.world.main)
        try:
            wait_start = time.perf_counter()
            for data in loader if start < steps else ():
                record = self.train_step(data, data_wait=time.perf_counter() - wait_start)
                self.log(record, bar)
                if self.state.step % self.recipe.checkpoint_every == 0 or self.state.step == steps:
                    self.save()
                if self.state.step >= steps:
                    break
                wait_start = time.perf_counter()
        finally:
            loader.close()
            bar.close()
            self.close()
        return self.finish()

    def loader(self, start: int) -> Loader:
        device = self.world.device
        encode_ids = lambda px: encode_image_tokens(self.model, px.to(device))[0].cpu()  # noqa: E731
        return Loader(self.shards, self.encoder, self.processor.image_processor, encode_ids, self.recipe.batch.size,
                      self.recipe.batch.micro, self.world.rank, self.world.size, start,
                      pack_len=self.recipe.data.max_seq_len if self.recipe.batch.packing else None)

    def train_step(self, data: StepData, data_wait: float) -> dict:
        started = time.perf_counter()
        if data.first_row != self.state.step * self.recipe.batch.size:
            raise TrainingError(f"data position {data.first_row} does not match step {self.state.step}")
        set_train_mode(self.model, self.recipe.trainable)
        self.optimizer.zero_grad(set_to_none=True)
        total_rows = sum(data.rows.values())
        weights = {t: n / total_rows for t, n in data.rows.items()}
        sums = torch.zeros(len(TASKS), 2, dtype=torch.float64)
        for i, mb in enumerate(data.micro):
            with no_sync(self.module, last=i == len(data.micro) - 1), autocast(self.recipe.precision, self.world.device):
                out = self.module(mb.to(self.world.device))
                # DDP averages gradients over workers; the normalisers are already global.
                loss = combine(out, weights, data.targets) * self.world.size
            loss.backward()
            for task, (ce_sum, count) in out.items():
                sums[TASKS.index(task)] += torch.stack([ce_sum.detach().double().cpu(), count.double().cpu()])
        sums = all_reduce_sum(sums.to(self.world.device)).cpu()
        losses = {t: (sums[i, 0] / sums[i, 1]).item() for i, t in enumerate(TASKS) if sums[i, 1] > 0}
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.recipe.optim.grad_clip).item()
        if not all(math.isfinite(v) for v in [*losses.values(), grad_norm]):
            try:
                latest = self.checkpointer.latest()
            except CheckpointError:
                latest = None
            raise TrainingError(f"step {self.state.step + 1}: non-finite loss {losses} (grad norm {grad_norm}); stopped "
                                f"without updating. Last good checkpoint: {latest or 'none (no checkpoint yet)'}")
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.state.step += 1
        self.state.rows_seen += total_rows
        self.state.tokens_seen += data.tokens
        step_time = time.perf_counter() - started
        return {
            "step": self.state.step, "loss": losses, "objective": sum(weights[t] * v for t, v in losses.items()),
            "lr": lr, "grad_norm": grad_norm, "rows": data.rows,
            "ratio_drift": ratio_drift(data.rows, {t: self.recipe.share(t) for t in TASKS}),
            "tokens": data.tokens, "tokens_per_s": data.tokens / (step_time + data_wait),
            "step_time": step_time, "data_wait": data_wait, "first_row": data.first_row, "workers": self.world.size,
            "time": time.time(), **self.cost.record(data.lengths, data.rows, data.targets, step_time + data_wait),
        }

    def log(self, record: dict, bar: tqdm) -> None:
        if self.metrics is not None:
            self.metrics.write(record)
        bar.update(1)
        bar.set_postfix({t[:3]: f"{v:.3f}" for t, v in record["loss"].items()})

    def save(self) -> Path:
        return self.checkpointer.save(self.module, self.model, self.processor, self.optimizer, self.scheduler, self.state)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.checkpointer.close()

    def finish(self) -> Path:
        """Final model dir (the next stage's init), loss plot, samples and a summary."""
        final = self.checkpointer.save_final(self.module, self.model, self.processor)
        if self.world.main:
            from model.samples import write_samples

            save_loss_plot(self.out / "train.jsonl", self.out / "loss.png", self.recipe.name)
            # Sharded (FSDP) weights are not whole on any rank: sample from the saved final model then.
            model = load_janus(final, dtype=MASTER_DTYPE)[0].to(self.world.device) if self.sharded else self.model
            write_samples(model, self.processor, self.recipe, self.shards, self.out / "samples", self.world.device)
            (self.out / "summary.json").write_text(json.dumps(summary(self.out / "train.jsonl", self.recipe), indent=2))
        return final


def summary(log_path: Path, recipe: TrainRecipe, window: int = 4) -> dict:
    """First/last-window mean loss per task, mean ratio drift and data-wait share of the run."""
    from model.metrics import read_log

    records = read_log(log_path)
    out: dict = {"name": recipe.name, "stage": recipe.stage, "steps": len(records), "loss": {}}
    for task in TASKS:
        values = [r["loss"][task] for r in records if task in r["loss"]]
        if values:
            k = min(window, max(1, len(values) // 2))
            out["loss"][task] = {"first": sum(values[:k]) / k, "last": sum(values[-k:]) / k}
    if records:
        out["ratio_drift_mean"] = sum(r["ratio_drift"] for r in records) / len(records)
        # The first step also waits for the loader to start (imports, first decode): reported apart.
        steady = records[1:] or records
        busy = sum(r["step_time"] + r["data_wait"] for r in steady)
        out["data_wait_share"] = sum(r["data_wait"] for r in steady) / busy if busy else 0.0
        out["first_step_data_wait_s"] = records[0]["data_wait"]
        out.update(cost_summary(records))
    return out
