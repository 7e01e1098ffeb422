"""`janus-forge repro`: the tiny end-to-end reproduction, with evidence that the model learned.

    1. build what stage I mixes (and the held-out sets)          janus-forge build --only stage1
    2. evaluate the untrained init; train stage I; evaluate it
    3. stage I's model becomes the teacher; build the rest (the synthetic share rendered by it)
    4. train stage II, evaluate; train stage III, evaluate
    5. report; exit non-zero if an evaluation missed its recipe's thresholds
Every step resumes: rerunning after a crash keeps finished builds, stages and evals.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.recipe import load_recipe
from pipeline.report import write_report
from pipeline.runner import BuildOptions, run_build

log = logging.getLogger("janus_forge.repro")


class ReproError(RuntimeError):
    """The reproduction cannot run or did not show what it must; the message says what."""


def _trainer():
    """The trainer's modules; a missing dependency is an error that says what to install."""
    try:
        from model import repro
    except ImportError as err:
        raise ReproError(f"the trainer cannot be imported ({err}); install the project with its dependencies: "
                         "`pip install -e .` (scripts/repro.sh does it), or pass --no-train to build data only") from None
    return repro


def run_repro(out: Path, recipe: Path, train: bool = True, address: str | None = None) -> Path:
    # The trainer is imported first: a missing dependency stops the repro before any work, never
    # after a data build that would then end without training.
    repro = _trainer() if train else None
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    parsed = load_recipe(recipe)
    build_dir, train_dir, eval_dir = out / "build", out / "train", out / "eval"
    if repro is None:
        run_build(parsed, BuildOptions(out=build_dir, address=address))
        return _report(build_dir, out, None)
    two_pass = "stage1" in parsed.mix.stages
    log.info("repro 1/5: building %s's stage-I data into %s", parsed.path.name, build_dir)
    run_build(parsed, BuildOptions(out=build_dir, address=address, only="stage1" if two_pass else None))
    failures: list[str] = []
    init = repro.base_model(build_dir)
    stage1 = repro.stage_recipe(1, build_dir, init)
    log.info("repro 2/5: evaluating the untrained init, then training stage I")
    summary = repro.evaluate(init, build_dir, eval_dir / "init", stage1)
    failures += repro.record_checks(eval_dir, "init", repro.verdicts(summary, stage1.eval.init_checks))
    runs = []
    for stage in (1, 2, 3):
        if stage == 2 and two_pass:
            repro.place_teacher(runs[0], build_dir)
            log.info("repro 3/5: stage I's model is the teacher; building the rest of %s", parsed.path.name)
            run_build(parsed, BuildOptions(out=build_dir, address=address))
        log.info("repro %d/5: training stage %d", 2 if stage == 1 else 4, stage)
        run = repro.train_stage(stage, build_dir, train_dir, runs[-1] if runs else init)
        runs.append(run)
        recipe = repro.stage_recipe(stage, build_dir, run)
        summary = repro.evaluate(run / "final", build_dir, eval_dir / f"stage{stage}", recipe)
        failures += repro.record_checks(eval_dir, f"stage{stage}", repro.verdicts(summary, recipe.eval.checks))
    report = _report(build_dir, out, train_dir)
    if failures:
        raise ReproError(f"{len(failures)} evaluation threshold(s) missed (report: {report}):\n  " + "\n  ".join(failures))
    return report


def _report(build_dir: Path, out: Path, train_dir: Path | None) -> Path:
    report = write_report(build_dir, out / "report.html", train_dir)
    log.info("repro 5/5: report written to %s", report)
    return report
