"""`janus-forge train RECIPE --out DIR [--resume]`: the parser and runner the pipeline CLI mounts."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path



def user_errors() -> tuple[type[Exception], ...]:
    """What a user can fix (bad recipe, data, init, a NaN): one clear line, no traceback.

    Imported on demand: these modules pull in torch and transformers, which every other
    `janus-forge` command would otherwise pay for at start-up.
    """
    from model.config import TrainRecipeError
    from model.shards import DataError
    from model.tiny import ModelDirError
    from model.train import TrainingError

    return (TrainRecipeError, DataError, ModelDirError, TrainingError)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train one Janus-Pro stage from a train recipe")
    p.add_argument("recipe", type=Path, help="recipes/train/<model>/stage{1,2,3}.yaml")
    p.add_argument("--out", type=Path, required=True, help="run dir: checkpoints, logs, final model, samples")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--data", type=Path, help="build dir to read shards from (overrides data.dir)")
    p.add_argument("--init", type=Path, help="base model dir or previous stage run dir (overrides init)")
    p.add_argument("--workers", type=int, help="Ray Train workers (overrides the recipe; 1 = this process)")
    p.set_defaults(func=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    from model.config import load_train_recipe
    from model.train import Trainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        recipe = load_train_recipe(args.recipe, data=args.data, init=args.init)
        workers = args.workers or recipe.workers
        if workers > 1:
            from model.distributed import run_distributed

            final = run_distributed(recipe, args.out, args.resume, workers)
        else:
            final = Trainer(recipe, args.out, resume=args.resume).train()
    except user_errors() as err:
        print(f"janus-forge train: error: {err}", file=sys.stderr)
        return 2
    print(f"janus-forge train: {recipe.name} done; model at {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.cli")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
