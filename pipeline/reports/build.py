"""Report sections for the data build: the build record, the funnel per stage, the shard mix."""

from __future__ import annotations

import json

from pipeline.report import ReportContext, section


@section("Build", order=0)
def build_summary(ctx: ReportContext) -> str | None:
    row = ctx.con.execute("SELECT id, recipe_name, recipe_hash, started, ended, status, attempts, versions FROM builds ORDER BY started DESC LIMIT 1").fetchone()
    if not row:
        return None
    versions = json.loads(row[7] or "{}")
    rows = [["build", row[0]], ["recipe", row[1]], ["recipe hash", row[2][:16]], ["started", str(row[3])],
            ["ended", str(row[4])], ["status", row[5]], ["attempts", row[6]]] + [[k, v] for k, v in versions.items()]
    return ctx.table(["", ""], rows)


@section("Funnel per stage", order=10)
def funnel(ctx: ReportContext) -> str | None:
    runs = ctx.con.execute(
        "SELECT source, step, stage, rows_read, rows_in, rows_kept, rows_filtered, rows_failed, seconds "
        "FROM stage_runs ORDER BY source, step").fetchall()
    if not runs:
        return None
    html = ctx.table(["source", "step", "stage", "read", "in", "kept", "filtered", "failed", "seconds"], [list(r) for r in runs])
    reasons = ctx.con.execute(
        "SELECT source, stage, status, reason, count(*) n, any_value(detail) example FROM rejections "
        "GROUP BY ALL ORDER BY source, stage, n DESC").fetchall()
    if reasons:
        html += "<h3>Rejections by reason</h3>" + ctx.table(["source", "stage", "status", "reason", "rows", "example detail"], [list(r) for r in reasons])
    html += ctx.figure(_funnel_plot(runs))
    return html


def _funnel_plot(runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r[0]} · {r[1]}. {r[2]}" for r in runs][::-1]
    kept, filtered, failed = ([r[i] for r in runs][::-1] for i in (5, 6, 7))
    fig, ax = plt.subplots(figsize=(8, 0.26 * len(runs) + 1))
    y = range(len(runs))
    ax.barh(y, kept, label="kept", color="#4c9a5f")
    ax.barh(y, filtered, left=kept, label="filtered", color="#e0a030")
    ax.barh(y, failed, left=[k + f for k, f in zip(kept, filtered)], label="failed", color="#c0392b")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_xscale("symlog", linthresh=10)  # sources differ by orders of magnitude
    ax.set_xlabel("rows in (symlog scale)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("rows in per stage, by verdict")
    return fig


@section("Shard mix per training stage", order=20)
def shard_mix(ctx: ReportContext) -> str | None:
    rows = ctx.con.execute(
        "SELECT training_stage, task, source, sum(rows) AS rows, count(DISTINCT path) AS shards "
        "FROM shards GROUP BY ALL ORDER BY training_stage, task, source").fetchall()
    if not rows:
        return None
    html = ctx.table(["training stage", "task", "source", "rows", "shards"], [list(r) for r in rows])
    events = ctx.con.execute(
        "SELECT training_stage, source, any_value(event), count(*), min(position) FROM mix_events "
        "GROUP BY ALL ORDER BY ALL").fetchall()
    if events:
        html += "<h3>Sources that ran out</h3>" + ctx.table(
            ["training stage", "source", "policy", "times run out", "first at row"], [list(e) for e in events])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted({r[0] for r in rows})
    keys = sorted({(r[1], r[2]) for r in rows})
    colours = {"understanding": plt.cm.Blues, "text": plt.cm.Greens, "generation": plt.cm.Oranges}
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(stages) + 1.6))
    left = [0.0] * len(stages)
    for n, (task, source) in enumerate(keys):
        total = {st: sum(r[3] for r in rows if r[0] == st) for st in stages}
        share = [next((r[3] for r in rows if r[0] == st and (r[1], r[2]) == (task, source)), 0) / total[st] for st in stages]
        shade = colours[task](0.35 + 0.5 * (n % 4) / 3)
        ax.barh(stages, share, left=left, color=shade, edgecolor="white", label=f"{task}: {source}")
        left = [a + b for a, b in zip(left, share)]
    ax.invert_yaxis()
    ax.set_xlabel("share of rows")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    ax.set_title("what each training stage is made of")
    return html + ctx.figure(fig)
