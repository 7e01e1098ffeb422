"""Benchmark: the generate_images stage (our sampling engine) against plain transformers image generation.

Ours: `GenerateImages.run` (janus backend: per-image seeds, one StaticCache reused across calls,
batched VQ decode, optionally a compiled decode step, WebP encoding and lineage included).
Baseline: the bare library as its docs show it, `JanusForConditionalGeneration.generate(
generation_mode="image", do_sample=True)` plus `decode_image_tokens`, loaded with from_pretrained
from the same dir, on the same prompts in the same batches, the global RNG seeded per batch with
the batch's first image seed (the library takes no per-image seed). Both use CFG 5, temperature 1.

Reported: images/s and seconds per decoding step (a step = one forward of the batch's cond+uncond
rows = wall time / (batches x image tokens)); `ratio` = ours / baseline images/s.

    python benchmarks/generate.py [--small] [--model-dir DIR] [--device cuda] [--compile/--no-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import JanusForConditionalGeneration, JanusProcessor  # noqa: E402

from model.tiny import TinySpec, build_tiny_janus  # noqa: E402
from pipeline.schema import make_rows  # noqa: E402
from stages.base import StageContext  # noqa: E402
from stages.generate import GenerateConfig, GenerateImages  # noqa: E402


def library_generate(model, processor, prompts: list[str], seed: int) -> torch.Tensor:
    """transformers' own text-to-image path, nothing of ours: chat template, generate, VQ decode."""
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": p}]}], add_generation_prompt=True)
             for p in prompts]
    inputs = processor(text=texts, generation_mode="image", padding=True, return_tensors="pt").to(model.device)
    torch.manual_seed(seed)
    ids = model.generate(**inputs, generation_mode="image", do_sample=True, guidance_scale=5.0, temperature=1.0)
    return model.decode_image_tokens(ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="the tiny preset's shapes (random weights: speed does not depend on them) and few prompts")
    ap.add_argument("--model-dir", help="a local Janus checkpoint (e.g. Janus-Pro-1B converted for transformers)")
    ap.add_argument("--prompts", type=int)
    ap.add_argument("--per-prompt", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile our decode step (default: on cuda)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n = args.prompts or (4 if args.small else 16)
    tmp = Path(tempfile.mkdtemp())
    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:  # random init; "small" is the tiny preset's shapes, otherwise wider and a 16x16 = 256-token grid
        spec = TinySpec() if args.small else TinySpec(image_size=64, hidden_size=256, intermediate_size=512, num_layers=4, num_heads=4)
        model_dir = build_tiny_janus(tmp / "janus", spec, seed=0)
    prompts = [f"a watercolor painting of a fox number {i}, soft light, detailed" for i in range(n)]
    table = make_rows([{"task": "generation", "source": "bench", "source_key": str(i), "prompt": p} for i, p in enumerate(prompts)])
    gpus = 1.0 if args.device == "cuda" else 0.0
    cfg = GenerateConfig(model_path=str(model_dir), images_per_prompt=args.per_prompt, batch_size=args.batch, gpus=gpus,
                         image_format="webp", dtype=args.dtype, compile=args.compile)
    stage = GenerateImages(cfg, StageContext(build_id="bench", seed=0, recipe_dir=tmp, source="bench", task="generation"))
    stage.preflight()
    stage.run(table)  # setup() + a warm-up (and the compile, if on) over every batch shape, as an actor does once

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    model = JanusForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, local_files_only=True).to(args.device).eval()
    processor = JanusProcessor.from_pretrained(model_dir, local_files_only=True)
    rows = stage.fan_out(table).to_pylist()  # the same prompts and seeds, in the same order and batches
    jobs = [(r["prompt"], r["lineage"]["seed"]) for r in rows]
    batches = [jobs[i : i + args.batch] for i in range(0, len(jobs), args.batch)]
    with torch.no_grad():
        library_generate(model, processor, [p for p, _ in batches[0]], batches[0][0][1])  # warm-up
    images, tokens = len(jobs), stage.backend.describe()["image_tokens"]

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    ours, base = [], []
    # interleaved, best of N: on a shared machine single runs swing with other load
    for _ in range(args.repeats):
        sync()
        t = time.perf_counter()
        out = stage.run(table)
        sync()
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            for chunk in batches:
                library_generate(model, processor, [p for p, _ in chunk], chunk[0][1])
        sync()
        base.append(time.perf_counter() - t)
    assert out.num_rows == images and set(out.column("status").to_pylist()) == {"kept"}
    assert all(len(x) == tokens for x in out.column("image_tokens").to_pylist())
    o, b = min(ours), min(base)
    steps = len(batches) * tokens
    result = {"benchmark": "generate", "ours": round(images / o, 3), "baseline": round(images / b, 3), "unit": "images/s",
              "ratio": round(b / o, 3), "ours_s_per_step": round(o / steps, 6), "baseline_s_per_step": round(b / steps, 6),
              "device": args.device, "compiled": stage.backend.compile, "images": images, "batch": args.batch, "image_tokens": tokens}
    print(f"janus model {model_dir.name} on {args.device} ({args.dtype}), {n} prompts x {args.per_prompt} images ({tokens} tokens each), "
          f"batch {args.batch}, compile {stage.backend.compile}")
    print(f"generate_images stage: {images / o:.2f} images/s, {o / steps * 1e3:.2f} ms/step; "
          f"transformers generate(generation_mode='image'): {images / b:.2f} images/s, {b / steps * 1e3:.2f} ms/step; ratio {b / o:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
