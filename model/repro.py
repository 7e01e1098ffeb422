"""`janus-forge repro` training: tiny stage I -> II -> III, each evaluated, thresholds asserted.

The base model is the tiny preset under <build>/models/tiny (its VQ fitted on the shapes world):
the same checkpoint the build's vq_tokenize stage encodes with, so pre-computed ids match it.
After each stage (and on the untrained init) `janus-forge eval` runs on the build's held-out sets;
each train recipe's `eval.checks` say what the stage must show (recipes/train/tiny/). A stage
whose run dir already has a summary, or an eval that already has its eval.json, is kept as is:
re-running repro resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from model.config import EvalCheck, TrainRecipe, load_train_recipe
from model.eval import EvalOptions, run_eval
from model.tiny import resolve_model_dir
from model.train import Trainer, TrainingError

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "train" / "tiny"
log = logging.getLogger("janus_forge.repro")


class ThresholdError(TrainingError):
    """A stage's evaluation missed what its recipe says it must show."""


def stage_recipe(stage: int, build_dir: Path, init: Path, recipes: Path = RECIPES) -> TrainRecipe:
    return load_train_recipe(recipes / f"stage{stage}.yaml", data=build_dir, init=init)


def base_model(build_dir: Path) -> Path:
    return resolve_model_dir("tiny", Path(build_dir) / "models")


def train_stage(stage: int, build_dir: Path, out_dir: Path, init: Path, recipes: Path = RECIPES) -> Path:
    """Train (or resume, or keep) one stage; returns its run dir."""
    run = Path(out_dir) / f"stage{stage}"
    if not (run / "summary.json").is_file():
        recipe = stage_recipe(stage, build_dir, init, recipes)
        Trainer(recipe, run, resume=(run / "checkpoints").exists()).train()
    return run


def evaluate(model_dir: Path, build_dir: Path, out_dir: Path, recipe: TrainRecipe) -> dict:
    """The stage's eval (kept if already written): DIR/eval.json's summary."""
    done = Path(out_dir) / "eval.json"
    if done.is_file():
        return json.loads(done.read_text())["summary"]
    options = EvalOptions(guidance=tuple(recipe.eval.guidance), per_category=recipe.eval.per_category,
                          max_questions=recipe.eval.max_questions, seed=recipe.seed)
    return run_eval(model_dir, build_dir, out_dir, options)


def place_teacher(run: Path, build_dir: Path) -> Path:
    """Stage I's final model becomes <build>/models/teacher: generate_images renders the synthetic share with it."""
    teacher = Path(build_dir) / "models" / "teacher"
    if not (teacher / "config.json").is_file():
        tmp = teacher.with_name("teacher.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(run / "final", tmp)
        tmp.rename(teacher)
    return teacher


def lookup(summary: dict, path: str) -> float:
    value = summary
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ThresholdError(f"eval summary has no {path!r} (missing {key!r}); check the recipe's eval.checks")
        value = value[key]
    return float(value)


def verdicts(summary: dict, checks: list[EvalCheck]) -> list[dict]:
    """Each check with its measured value and whether it held."""
    out = []
    for c in checks:
        value = lookup(summary, c.metric)
        if c.min is not None:
            bound, ok, rule = c.min, value >= c.min, f">= {c.min:g}"
        elif c.max is not None:
            bound, ok, rule = c.max, value <= c.max, f"<= {c.max:g}"
        elif c.above is not None:
            bound = lookup(summary, c.above)
            ok, rule = value > bound, f"> {c.above}"
        else:
            bound = lookup(summary, c.at_most) + c.margin
            ok, rule = value <= bound, f"<= {c.at_most} + {c.margin:g}"
        out.append({"metric": c.metric, "value": round(value, 4), "rule": rule, "bound": round(bound, 4), "passed": ok,
                    "required": c.required})
    return out


def record_checks(out_dir: Path, name: str, results: list[dict]) -> list[str]:
    """Append a stage's check results to DIR/checks.json; returns the failures as lines."""
    path = Path(out_dir) / "checks.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[name] = results
    path.write_text(json.dumps(table, indent=2))
    for r in results:
        outcome = "ok" if r["passed"] else "MISSED" if r["required"] else "not shown (recorded, not required)"
        log.info("%s: %s = %.3f (%s %.3f): %s", name, r["metric"], r["value"], r["rule"], r["bound"], outcome)
    return [f"{name}: {r['metric']} = {r['value']:.3f}, needs {r['rule']} ({r['bound']:.3f})"
            for r in results if not r["passed"] and r["required"]]
