"""`janus-forge train RECIPE --out DIR [--resume]`, `eval`, `assemble`, `convert-deepseek`: the parsers
and runners the pipeline CLI mounts."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path



def user_errors() -> tuple[type[Exception], ...]:
    """What a user can fix (bad recipe, data, init, a NaN): one clear line, no traceback.

    Imported on demand: these modules pull in torch and transformers, which every other
    `janus-forge` command would otherwise pay for at start-up.
    """
    from model.assemble import AssembleError
    from model.config import TrainRecipeError
    from model.eval_sets import EvalDataError
    from model.shards import DataError
    from model.tiny import ModelDirError
    from model.train import TrainingError

    return (TrainRecipeError, DataError, ModelDirError, TrainingError, EvalDataError, AssembleError)


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


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="evaluate a Janus checkpoint on a build's held-out sets")
    p.add_argument("model", type=Path, help="model dir (any Janus checkpoint), or a train run dir (its final/)")
    p.add_argument("--data", type=Path, required=True, help="build dir holding the held-out sources")
    p.add_argument("--out", type=Path, required=True, help="where eval.json and images/ go")
    p.add_argument("--guidance", type=float, action="append", help="CFG scale; repeat for several (default: 5 and 1)")
    p.add_argument("--per-category", type=int, default=40, help="held-out prompts per generation category (0: all)")
    p.add_argument("--max-questions", type=int, default=200, help="questions per understanding set (0: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_eval_cli)
    return p


def run_eval_cli(args: argparse.Namespace) -> int:
    from model.eval import EvalOptions, run_eval
    from model.train import resolve_init

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = EvalOptions(guidance=tuple(args.guidance or (5.0, 1.0)), per_category=args.per_category,
                          max_questions=args.max_questions, batch_size=args.batch_size, device=args.device or _default_device(),
                          seed=args.seed)
    try:
        summary = run_eval(resolve_init(args.model), args.data, args.out, options)
    except user_errors() as err:
        print(f"janus-forge eval: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(headline(summary), indent=2))
    print(f"janus-forge eval: records and images in {args.out}")
    return 0


def add_assemble_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("assemble", help="build the stage-I base: LLM + SigLIP + LlamaGen VQ, fresh aligners and heads")
    p.add_argument("--llm", type=Path, required=True, help="LlamaForCausalLM dir with its tokenizer (e.g. DeepSeek-LLM)")
    p.add_argument("--siglip", type=Path, required=True, help="SiglipVisionModel (or SiglipModel) dir")
    p.add_argument("--vq", type=Path, required=True, help="LlamaGen VQ-16 checkpoint (.pt / dir holding one) or a JanusVQVAE dir")
    p.add_argument("--out", type=Path, required=True, help="where the transformers Janus checkpoint goes")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"], help="saved weight dtype")
    p.add_argument("--seed", type=int, default=0, help="seed of the fresh aligners, heads and embeddings")
    p.add_argument("--allow-pickle", action="store_true", help="read a VQ .pt that holds Python objects (trusted files only)")
    p.set_defaults(func=run_assemble)
    return p


def run_assemble(args: argparse.Namespace) -> int:
    from model.assemble import assemble

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = assemble(args.llm, args.siglip, args.vq, args.out, dtype=args.dtype, seed=args.seed,
                           allow_pickle=args.allow_pickle)
    except user_errors() as err:
        print(f"janus-forge assemble: error: {err}", file=sys.stderr)
        return 2
    print(f"janus-forge assemble: {summary['parameters']:,} parameters, {len(summary['fresh_tensors'])} fresh tensors; "
          f"stage-I base at {args.out}")
    return 0


def add_convert_deepseek_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert-deepseek", help="convert a deepseek-ai/Janus-layout checkpoint to the transformers Janus layout")
    p.add_argument("src", type=Path, help="dir in the original layout (config.json with language_config, pytorch_model.bin, tokenizer)")
    p.add_argument("out", type=Path, help="output dir (transformers Janus layout)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="saved weight dtype (default: the source's)")
    p.set_defaults(func=run_convert_deepseek)
    return p


def run_convert_deepseek(args: argparse.Namespace) -> int:
    from model.deepseek_janus import convert_deepseek

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = convert_deepseek(args.src, args.out, dtype=args.dtype)
    except user_errors() as err:
        print(f"janus-forge convert-deepseek: error: {err}", file=sys.stderr)
        return 2
    print(f"janus-forge convert-deepseek: {summary['parameters']:,} parameters ({summary['dtype']}) at {args.out}")
    return 0


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def headline(summary: dict) -> dict:
    """The few numbers a person reads first."""
    out = {}
    for scale, g in summary.get("generation", {}).items():
        out[f"generation {scale}"] = {"overall": g["overall"], "chance": g["chance"],
                                      **{a: v["accuracy"] for a, v in g["attributes"].items()}}
    for name, u in summary.get("understanding", {}).items():
        out[name] = {k: u[k] for k in ("accuracy", "majority", "chance")}
    if "text" in summary:
        out["text perplexity"] = summary["text"]["perplexity"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_assemble_parser(sub)
    add_convert_deepseek_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
