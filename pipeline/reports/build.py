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

    labels = [f"{r[0]}\n{r[1]}. {r[2]}" for r in runs]
    kept = [r[5] for r in runs]
    filtered = [r[6] for r in runs]
    failed = [r[7] for r in runs]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(runs)), 3.6))
    x = range(len(runs))
    ax.bar(x, kept, label="kept", color="#4c9a5f")
    ax.bar(x, filtered, bottom=kept, label="filtered", color="#e0a030")
    ax.bar(x, failed, bottom=[k + f for k, f in zip(kept, filtered)], label="failed", color="#c0392b")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("rows")
    ax.legend()
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
    events = ctx.con.execute("SELECT training_stage, source, event, position, detail FROM mix_events ORDER BY ALL").fetchall()
    if events:
        html += "<h3>Sources that ran out</h3>" + ctx.table(["training stage", "source", "policy", "at row", "detail"], [list(e) for e in events])
    stages = sorted({r[0] for r in rows})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 3), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        mine = [r for r in rows if r[0] == stage]
        ax.pie([r[3] for r in mine], labels=[f"{r[1]}\n{r[2]}" for r in mine], autopct="%1.0f%%", textprops={"fontsize": 7})
        ax.set_title(stage)
    return html + ctx.figure(fig)
