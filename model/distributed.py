"""Ray Train launcher: the same Trainer on N workers (gloo on CPU, NCCL on GPU). The only module importing ray."""

from __future__ import annotations

import os
from pathlib import Path

import ray
import ray.train
import ray.train.torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from model.config import TrainRecipe

ROOT = Path(__file__).resolve().parents[1]


def _worker(config: dict) -> None:
    from model.train import Trainer

    recipe = TrainRecipe.model_validate(config["recipe"])
    Trainer(recipe, Path(config["out"]), resume=config["resume"], device=ray.train.torch.get_device()).train()


def run_distributed(recipe: TrainRecipe, out_dir: Path, resume: bool, workers: int, use_gpu: bool | None = None) -> Path:
    """Run one stage on `workers` Ray Train workers; checkpoints and logs land in `out_dir` as in one process."""
    from model.train import TrainingError, preflight

    out_dir = Path(out_dir).resolve()
    preflight(recipe, out_dir, resume, workers)  # fail on the driver, before any worker starts
    if not ray.is_initialized():
        # Workers import janus-forge from this checkout, wherever the driver was started.
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}},
                 include_dashboard=False, log_to_driver=True)
    if use_gpu is None:
        use_gpu = bool(ray.cluster_resources().get("GPU", 0))
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"recipe": recipe.model_dump(mode="json"), "out": str(out_dir), "resume": resume},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(name=recipe.name, storage_path=str(out_dir / "ray")),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise TrainingError(f"{recipe.name}: a Ray Train worker failed: {err}") from None
    return out_dir / "final"
