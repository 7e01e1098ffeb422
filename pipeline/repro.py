"""`janus-forge repro`: the tiny end-to-end reproduction: build → train stages I-III → report."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.recipe import load_recipe
from pipeline.report import write_report
from pipeline.runner import BuildOptions, run_build

log = logging.getLogger("janus_forge.repro")


def run_repro(out: Path, recipe: Path, train: bool = True, address: str | None = None) -> Path:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    parsed = load_recipe(recipe)
    build_dir = out / "build"
    log.info("repro 1/3: building %s into %s", parsed.path.name, build_dir)
    run_build(parsed, BuildOptions(out=build_dir, address=address))
    train_dir = None
    if train:
        try:
            from model.repro import train_tiny_stages
        except ImportError:
            log.warning("repro 2/3: the trainer is not installed; skipping training")
        else:
            train_dir = out / "train"
            log.info("repro 2/3: training tiny stages I → II → III into %s", train_dir)
            train_tiny_stages(build_dir, train_dir)
    report = write_report(build_dir, out / "report.html", train_dir)
    log.info("repro 3/3: report written to %s", report)
    return report
