"""Report section: what the model can do after each stage (janus-forge eval), against chance,
the thresholds the repro asserts, sample grids per category, and the synthetic share's signal."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.report import section
from stages.image_checks import decode

STAGES = ("init", "stage1", "stage2", "stage3")


def _evals(eval_dir: Path) -> dict[str, dict]:
    return {s: json.loads((eval_dir / s / "eval.json").read_text()) for s in STAGES if (eval_dir / s / "eval.json").is_file()}


def _get(summary: dict, path: str):
    for key in path.split("."):
        if not isinstance(summary, dict) or key not in summary:
            return None
        summary = summary[key]
    return summary


def metric_rows(evals: dict[str, dict]) -> list[list]:
    """One row per metric, one column per evaluated model, then chance and the majority baseline."""
    first = next(iter(evals.values()))["summary"]
    scales = list(first.get("generation", {}))
    rows: list[tuple[str, str, str | None, str | None]] = []
    for scale in scales:
        g = f"generation.{scale}"
        rows.append((f"generation overall ({scale})", f"{g}.overall", f"{g}.chance", None))
        for attr in ("colour", "shape", "count", "position"):
            rows.append((f"  {attr} ({scale})", f"{g}.attributes.{attr}.accuracy", f"{g}.attributes.{attr}.chance", None))
        for cat in first["generation"][scale]["categories"]:
            rows.append((f"  category {cat} ({scale})", f"{g}.categories.{cat}.accuracy", f"{g}.categories.{cat}.chance", None))
    for name in ("shapes_qa", "chart_qa"):
        u = f"understanding.{name}"
        rows.append((f"{name} relaxed accuracy", f"{u}.accuracy", f"{u}.chance", f"{u}.majority"))
    rows.append(("text perplexity (held out)", "text.perplexity", None, None))
    out = []
    for label, path, chance, majority in rows:
        values = [_get(e["summary"], path) for e in evals.values()]
        if all(v is None for v in values):
            continue
        out.append([label, *values, _get(first, chance) if chance else None, _get(first, majority) if majority else None])
    return out


def sample_grid(ctx, eval_dir: Path, stage: str, evaluation: dict, per_category: int = 6) -> str:
    """The first few generations per category at the first guidance, with the checker's verdict."""
    records = [r for r in evaluation["records"] if r["kind"] == "generation"]
    if not records:
        return ""
    first_scale = records[0]["guidance"]
    parts = [f"<p><b>{stage}</b>: generations at guidance {first_scale:g} (✓ = the checker passed it)</p>"]
    for cat in dict.fromkeys(r["category"] for r in records):
        chosen = [r for r in records if r["category"] == cat and r["guidance"] == first_scale][:per_category]
        figs = "".join(ctx.image((eval_dir / stage / r["image"]).read_bytes(), f"{'✓' if r['passed'] else '✗'} {r['prompt']}", width=96)
                       for r in chosen)
        parts.append(f"<div><i>{html.escape(cat)}</i><br>{figs}</div>")
    return "\n".join(parts)


def synthetic_signal(build_dir: Path) -> list[list]:
    """The checker's pass rate on the synthetic images the aesthetic filter kept vs rejected."""
    from model.eval_checks import check, detect
    from stages.shapes_world import parse_prompt

    out = []
    for source in sorted((build_dir / "work").iterdir()):
        scored = sorted(source.glob("*-score_images"))
        if not scored or not list(source.glob("*-generate_images")):
            continue
        counts = {"kept": [0, 0], "filtered": [0, 0], "unparsed": 0}
        for part in sorted(scored[0].glob("*.parquet")):
            for row in pq.read_table(part, columns=["prompt", "image", "status"]).to_pylist():
                if row["status"] not in ("kept", "filtered") or not (row["image"] or {}).get("bytes"):
                    continue
                spec = parse_prompt(row["prompt"] or "")
                if spec is None:
                    counts["unparsed"] += 1
                    continue
                verdict = check(spec, detect(decode(row["image"]["bytes"])))  # scored rows decoded once already
                counts[row["status"]][0] += verdict["passed"]
                counts[row["status"]][1] += 1
        for status in ("kept", "filtered"):
            passed, n = counts[status]
            out.append([source.name, "kept by the filter" if status == "kept" else "rejected by the filter", n,
                        round(passed / n, 3) if n else None])
        out.append([source.name, "prompt outside the shapes grammar (not checkable)", counts["unparsed"], None])
    return out


def preset_fits(preset_dir: Path) -> str:
    """What the tiny preset's fitted parts score on held-out renders (model/tiny_vq.py, model/tiny_vision.py)."""
    parts = []
    vq, vision = preset_dir / "vq_fit.json", preset_dir / "vision_fit.json"
    if vq.is_file():
        v = json.loads(vq.read_text())
        parts.append(f"its VQ, fitted on the shapes world, reconstructs {v['heldout_images']} held-out renders at "
                     f"<b>{v['heldout_psnr']} dB PSNR</b> ({v['codes_used']} of {v['codebook']} codes used)")
    if vision.is_file():
        v = json.loads(vision.read_text())
        acc = ", ".join(f"{k} {a:.2f}" for k, a in v["heldout_probe_accuracy"].items())
        parts.append(f"its vision tower, pre-trained on the world's captions in SigLIP's place, lets a linear probe "
                     f"read {v['heldout_images']} held-out renders ({acc})")
    return f"<p>The tiny preset: {'; '.join(parts)}.</p>" if parts else ""


@section("What the model can do (evaluation)", order=75)
def render(ctx) -> str | None:
    train_dir = getattr(ctx, "train_dir", None)
    if train_dir is None:
        return None
    eval_dir = Path(train_dir).parent / "eval"
    evals = _evals(eval_dir) if eval_dir.is_dir() else {}
    if not evals:
        return None
    parts = [
        "<p><code>janus-forge eval</code> on the build's held-out rows (sources with <code>split: heldout</code>; "
        "no mix reads them) after each stage and on the untrained init. Generation is GenEval-style: each image "
        "is checked by a deterministic detector (colour, shape, count, position); <i>chance</i> is the pass rate of a "
        "perfect renderer that ignores the prompt's words. Understanding uses ChartQA's relaxed accuracy beside the "
        "majority-answer baseline.</p>",
        ctx.table(["metric", *evals, "chance", "majority"], metric_rows(evals)),
    ]
    parts.append(preset_fits(Path(ctx.build_dir) / "models" / "tiny"))
    checks_file = eval_dir / "checks.json"
    if checks_file.is_file():
        checks = json.loads(checks_file.read_text())
        rows = [[stage, c["metric"], c["value"], f"{c['rule']} ({c['bound']:.3f})",
                 "yes" if c["passed"] else "MISSED" if c.get("required", True) else "no (recorded, not required)"]
                for stage, items in checks.items() for c in items]
        parts += ["<p>Thresholds the repro asserts (recipes/train/tiny/stage*.yaml, <code>eval.checks</code>):</p>",
                  ctx.table(["after", "metric", "value", "must be", "held"], rows)]
    for stage in ("stage1", "stage3"):
        if stage in evals:
            parts.append(sample_grid(ctx, eval_dir, stage, evals[stage]))
    signal = synthetic_signal(Path(ctx.build_dir))
    if signal:
        parts += ["<p>The synthetic share carries signal: the stage-I teacher rendered the Midjourney-style prompts "
                  "(their subject clause where the recipe says <code>render: subject</code>); the checker's pass rate on "
                  "what the aesthetic filter kept and rejected, against the prompt's own wording:</p>",
                  ctx.table(["source", "rows", "images", "checker pass rate"], signal)]
    return "\n".join(parts)
