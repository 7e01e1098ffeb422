"""The `janus-forge` command: build, repro, catalog, report (and train, from model/)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "recipes" / "data" / "tiny.yaml"

# Albumentations (pulled in by img2dataset) checks for updates over the network on import.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _build(args: argparse.Namespace) -> int:
    from pipeline.recipe import load_recipe
    from pipeline.runner import BuildOptions, run_build

    recipe = load_recipe(args.recipe)  # validated before anything is written
    run_build(recipe, BuildOptions(out=Path(args.out), address=args.address, restart=args.restart, only=args.only))
    return 0


def _repro(args: argparse.Namespace) -> int:
    from pipeline.repro import run_repro

    run_repro(Path(args.out), recipe=Path(args.recipe), train=not args.no_train, address=args.address)
    return 0


def _catalog(args: argparse.Namespace) -> int:
    from catalog.db import CATALOG_FILE, query
    from catalog.show import format_table

    path = Path(args.dir)
    path = path / CATALOG_FILE if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no catalog at {path}: run `janus-forge build` first")
    columns, rows = query(path, args.sql)
    print(format_table(columns, rows, max_width=args.max_width))
    return 0


def _report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report

    out = Path(args.dir)
    train_dir = out / "train" if (out / "train").exists() else None
    print(write_report(out / "build" if (out / "build").exists() else out, out / "report.html", train_dir))
    return 0


def _export(args) -> int:
    from pipeline.export import export_stage

    files = export_stage(Path(args.dir), args.stage, Path(args.out), args.rows_per_file, args.keep_image_bytes)
    print(f"wrote {len(files)} files to {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="janus-forge", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="run a data recipe into a build directory")
    b.add_argument("recipe", help="data recipe YAML (recipes/data/...)")
    b.add_argument("--out", required=True, help="build directory (resumes if it holds this recipe's build)")
    b.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    b.add_argument("--restart", action="store_true", help="discard work of another recipe version in --out")
    b.add_argument("--only", metavar="STAGE", help="build and mix only what training stage STAGE needs (plus held-out sources)")
    b.set_defaults(func=_build)

    r = sub.add_parser("repro", help="tiny end-to-end reproduction: build, train stages I-III, report")
    r.add_argument("--out", required=True, help="output directory (build/, train/, report.html)")
    r.add_argument("--recipe", default=str(TINY_RECIPE), help="data recipe (default: recipes/data/tiny.yaml)")
    r.add_argument("--no-train", action="store_true", help="stop after the data build")
    r.add_argument("--address", help="Ray cluster address")
    r.set_defaults(func=_repro)

    c = sub.add_parser("catalog", help="run SQL against a build's catalog.duckdb")
    c.add_argument("dir", help="build directory or catalog file")
    c.add_argument("sql", help='e.g. "SELECT * FROM stage_runs"')
    c.add_argument("--max-width", type=int, default=60, help="truncate cells wider than this")
    c.set_defaults(func=_catalog)

    e = sub.add_parser("export", help="write a training stage's rows as self-contained Parquet (datasets.load_dataset opens it)")
    e.add_argument("dir", help="build directory")
    e.add_argument("--stage", required=True, help="training stage (DIR/shards/<stage>)")
    e.add_argument("--out", required=True, help="output directory (part-NNNNN.parquet, in training order)")
    e.add_argument("--rows-per-file", type=int, default=4096)
    e.add_argument("--keep-image-bytes", action="store_true", help="keep generation rows' image bytes (default: VQ ids only)")
    e.set_defaults(func=_export)

    rep = sub.add_parser("report", help="(re)write report.html for a repro or build directory")
    rep.add_argument("dir")
    rep.set_defaults(func=_report)

    try:
        from model.cli import add_assemble_parser, add_convert_deepseek_parser, add_eval_parser, add_train_parser
    except ImportError:
        pass
    else:
        add_train_parser(sub)
        add_eval_parser(sub)
        add_assemble_parser(sub)
        add_convert_deepseek_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except Exception as err:
        from pipeline.errors import USER_ERRORS  # imported here: it pulls in torch via the trainer

        if not isinstance(err, USER_ERRORS):
            raise
        print(f"janus-forge {args.command}: error: {err}", file=sys.stderr)
        return 2
