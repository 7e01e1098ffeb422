"""Benchmark dedup_prompts.plan against datasketch used the way its README shows, on the same prompts.

    python benchmarks/prompt_dedup.py [--small] [--n 100000]

Prompts come from the tiny-data generator (recipes/data/tiny/make_prompts.py) and are cleaned
first (not timed). Both sides do the same work: exact dedup on normalised text, then MinHash
(128 perms, 3-word shingles) + LSH query-then-insert in sample_id order. The baseline builds one
MinHash per prompt and calls update() per shingle; the decisions must come out identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
from datasketch import MinHash, MinHashLSH  # noqa: E402

from stages.base import StageContext, kept  # noqa: E402
from stages.prompt_clean import CleanPrompts  # noqa: E402
from stages.prompt_dedup import DedupPrompts, normalise, shingles  # noqa: E402
from stages.prompt_source import MidjourneyPrompts  # noqa: E402


def load_generator():
    spec = importlib.util.spec_from_file_location("make_prompts", ROOT / "recipes/data/tiny/make_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def baseline(ids: list[str], prompts: list[str], num_perm: int = 128, threshold: float = 0.8) -> int:
    """The README way: a MinHash per prompt, update() per shingle; returns #dropped."""
    seen, dropped = set(), 0
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))  # same bands as ours
    sketches = {}
    for sid, prompt in sorted(zip(ids, prompts)):
        norm = normalise(prompt)
        if norm in seen:
            dropped += 1
            continue
        seen.add(norm)
        m = MinHash(num_perm=num_perm, seed=1)
        for s in shingles(norm.split(), 3):
            m.update(s)
        if any(m.jaccard(sketches[o]) >= threshold for o in sorted(lsh.query(m))):
            dropped += 1
            continue
        lsh.insert(sid, m)
        sketches[sid] = m
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="10k prompts instead of 100k")
    parser.add_argument("--n", type=int, default=None, help="unique base prompts to generate")
    args = parser.parse_args()
    n = args.n or (10_000 if args.small else 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        # read through the real source, so the benchmark sees exactly what a build would
        (Path(tmp) / "p.jsonl").write_text("\n".join(load_generator().generate(n_base=n, seed=0, world="scenes")) + "\n", encoding="utf-8")
        ctx = StageContext(build_id="bench", seed=0, recipe_dir=Path(tmp), source="bench", task="generation")
        config = MidjourneyPrompts.Config.model_validate({"kind": "midjourney_prompts", "paths": ["p.jsonl"]}, context={"recipe_dir": Path(tmp)})
        rows = pa.concat_tables(MidjourneyPrompts(config, ctx).read(Path(tmp) / "p.jsonl"))
    cleaned = CleanPrompts(CleanPrompts.Config(stage="clean_prompts"), ctx).run(rows)
    table = kept(cleaned).select(["sample_id", "prompt"]).sort_by("sample_id")
    total = table.num_rows

    stage = DedupPrompts(DedupPrompts.Config(stage="dedup_prompts"), ctx)
    t0, c0 = time.perf_counter(), time.process_time()
    stage.plan(table)
    ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
    ours_dropped = len(stage._dropped)

    t0, c0 = time.perf_counter(), time.process_time()
    base_dropped = baseline(table["sample_id"].to_pylist(), table["prompt"].to_pylist())
    base_s, base_cpu = time.perf_counter() - t0, time.process_time() - c0

    if base_dropped != ours_dropped:
        raise SystemExit(f"decisions differ: ours dropped {ours_dropped}, the baseline {base_dropped}")
    ours, base = total / ours_s, total / base_s
    print(f"{total} prompts: dedup_prompts.plan {ours_s:.2f} s ({ours:,.0f} prompts/s, {ours_dropped} dropped); "
          f"datasketch per-prompt baseline {base_s:.2f} s ({base:,.0f} prompts/s, {base_dropped} dropped); ratio {ours / base:.2f}x")
    # on a shared machine wall time swings with the load; CPU time is the steadier figure
    print(f"per CPU-second: ours {total / ours_cpu:,.0f} prompts/s, baseline {total / base_cpu:,.0f} prompts/s")
    print(json.dumps({"benchmark": "prompt_dedup_plan", "ours": round(ours, 1), "baseline": round(base, 1), "unit": "prompts/s", "ratio": round(ours / base, 3)}))


if __name__ == "__main__":
    main()
