"""Report section: tiny stage I-III training — loss curves per task and stage, MFU and memory, samples, answers."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.report import section

TASKS = ("understanding", "text", "generation")


def _stages(train_dir: Path) -> list[Path]:
    return sorted(p for p in train_dir.glob("stage*") if (p / "train.jsonl").is_file())


def _curves(ctx, runs: list[Path]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3), squeeze=False)
    for ax, run in zip(axes[0], runs):
        records = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines() if line]
        for task in TASKS:
            points = [(r["step"], r["loss"][task]) for r in records if task in r["loss"]]
            if points:
                ax.plot(*zip(*points), label=task)
        ax.set_title(run.name)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    html = ctx.figure(fig)
    plt.close(fig)
    return html


@section("Training", order=80)
def render(ctx) -> str | None:
    train_dir = getattr(ctx, "train_dir", None)
    if train_dir is None or not _stages(Path(train_dir)):
        return None
    runs = _stages(Path(train_dir))
    rows, costs = [], []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {"loss": {}}
        if "flops_per_token" in summary:
            mfu = summary.get("mfu")
            costs.append([run.name, summary["steps"], f"{summary['flops_per_token'] / 1e6:.2f}", f"{summary['tflops']:.4f}",
                          "n/a (no peak for this device)" if mfu is None else f"{100 * mfu:.1f}%",
                          f"{summary['peak_mem_gib']:.2f}"])
        for task, loss in summary["loss"].items():
            rows.append([run.name, task, f"{loss['first']:.3f}", f"{loss['last']:.3f}",
                         "yes" if loss["last"] < loss["first"] else "NO",
                         f"{summary.get('ratio_drift_mean', 0):.3f}", f"{100 * summary.get('data_wait_share', 0):.1f}%"])
    parts = [
        "<p>Tiny Janus-Pro (random init, CPU) trained stage I &rarr; II &rarr; III on this build with "
        "recipes/train/tiny/; each stage starts from the previous stage's final checkpoint. Loss is token "
        "cross-entropy per task (first/last = mean of the first/last few steps).</p>",
        _curves(ctx, runs),
        ctx.table(["stage", "task", "loss first", "loss last", "fell", "mean ratio drift", "data wait"], rows),
    ]
    if costs:
        parts += [
            "<p>Model FLOPs per token (forward and backward of the parts that run, model/flops.py), achieved "
            "TFLOP/s per device over the steps after the first, MFU against the device's peak (GPU table or the "
            "recipe's <code>peak_tflops</code>), and peak memory (GPU: allocator peak; CPU: peak RSS).</p>",
            ctx.table(["stage", "steps", "MFLOP/token", "TFLOP/s", "MFU", "peak memory GiB"], costs),
        ]
    for run in runs:
        grid = run / "samples" / "grid.png"
        if grid.is_file():
            parts.append(ctx.image(grid.read_bytes(), f"{run.name}: CFG samples for the fixed prompts"))
        answers = run / "samples" / "answers.json"
        if answers.is_file():
            items = json.loads(answers.read_text())
            parts.append(ctx.table(["stage", "question", "reference", "answer", "held out"],
                                   [[run.name, a["question"], a["reference"], a["answer"], "yes" if a["held_out"] else "no"] for a in items]))
    return "\n".join(parts)
