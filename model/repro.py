"""`janus-forge repro` training: tiny stage I -> II -> III on the tiny build, each from the previous checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from model.config import load_train_recipe
from model.tiny import resolve_model_dir
from model.train import Trainer, TrainingError

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "train" / "tiny"
log = logging.getLogger("janus_forge.repro")


def train_tiny_stages(build_dir: Path, out_dir: Path, recipes: Path = RECIPES) -> list[Path]:
    """Run recipes/train/tiny/stage{1,2,3}.yaml on `build_dir`; returns the stage run dirs.

    The base model is the tiny preset under <build>/models/tiny: the same checkpoint the
    build's vq_tokenize stage encodes with (`model_dir: tiny`), so pre-computed ids match it.
    A stage whose run dir already has a summary is kept as is (re-running repro resumes).
    Raises TrainingError when a task's loss did not fall in a stage.
    """
    build_dir, out_dir = Path(build_dir), Path(out_dir)
    init = resolve_model_dir("tiny", build_dir / "models")
    runs, report = [], {}
    for stage in (1, 2, 3):
        run = out_dir / f"stage{stage}"
        recipe = load_train_recipe(recipes / f"stage{stage}.yaml", data=build_dir, init=init)
        if not (run / "summary.json").is_file():
            Trainer(recipe, run, resume=(run / "checkpoints").exists()).train()
        summary = json.loads((run / "summary.json").read_text())
        report[f"stage{stage}"] = summary
        runs.append(run)
        init = run
    (out_dir / "training.json").write_text(json.dumps(report, indent=2))
    flat = [f"{s}/{t}: {v['first']:.3f} -> {v['last']:.3f}" for s, r in report.items() for t, v in r["loss"].items()
            if not v["last"] < v["first"]]
    if flat:
        raise TrainingError("losses did not fall: " + "; ".join(flat))
    return runs
