"""Report section: aesthetic and CLIP score histograms with thresholds, and a kept/rejected image grid."""

from __future__ import annotations

import io
import json
from pathlib import Path

from pipeline.report import section
from stages.image_checks import ImageRejected, decode

SCORE_STAGE, DEDUP_STAGE = "score_images", "dedup_images"
GRID = 8  # images per side of the grid: best kept, and a spread of rejections


def _glob(build_dir: Path, stage: str) -> str | None:
    pattern = f"work/*/*-{stage}/part-*.parquet"
    return str(build_dir / pattern) if any(build_dir.glob(pattern)) else None


def verdict_query(build_dir: Path) -> str | None:
    """SQL over the work files: each scored row with its final verdict (dedup overrides scoring)."""
    scored = _glob(build_dir, SCORE_STAGE)
    if scored is None:
        return None
    dedup = _glob(build_dir, DEDUP_STAGE)
    base = f"SELECT sample_id, source, status, reason, detail, scores, image FROM read_parquet('{scored}', union_by_name=true)"
    if dedup is None:
        return base
    return (
        f"SELECT s.sample_id, s.source, coalesce(d.status, s.status) AS status, coalesce(d.reason, s.reason) AS reason, "
        f"coalesce(d.detail, s.detail) AS detail, s.scores, s.image FROM ({base}) s LEFT JOIN "
        f"(SELECT sample_id, status, reason, detail FROM read_parquet('{dedup}', union_by_name=true)) d USING (sample_id)"
    )


def thresholds(details: list[str | None]) -> dict[str, float]:
    """The thresholds the stage applied, read back from its detail JSON."""
    for d in details:
        if d and d.startswith("{"):
            found = json.loads(d)
            if "min_aesthetic" in found:
                return {"aesthetic": found["min_aesthetic"], "clip_similarity": found["min_clip_similarity"]}
    return {}


def histograms(ctx, rows: list[tuple], limits: dict[str, float]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, (col, label) in zip(axes, ((1, "aesthetic"), (2, "clip_similarity"))):
        kept = [r[col] for r in rows if r[col] is not None and r[0] == "kept"]
        rejected = [r[col] for r in rows if r[col] is not None and r[0] != "kept"]
        ax.hist([kept, rejected], bins=30, stacked=True, label=["kept", "rejected"], color=["#3a7", "#c55"])
        if label in limits:
            ax.axvline(limits[label], color="k", linestyle="--", label=f"min {limits[label]}")
        ax.set_title(label.replace("_", " "))
        ax.legend(fontsize=8)
    fig.tight_layout()
    html = ctx.figure(fig)
    plt.close(fig)
    return html


def thumbnail(data: bytes) -> bytes | None:
    try:
        img = decode(data)
        img.thumbnail((160, 160))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return buf.getvalue()
    except ImageRejected:
        return None  # the undecodable rows are exactly the ones the grid cannot show


def grid(ctx, con, query: str) -> str:
    picks = con.execute(
        f"""WITH v AS ({query}), ranked AS (
              SELECT *, row_number() OVER (PARTITION BY status = 'kept', CASE WHEN status = 'kept' THEN '' ELSE reason END
                                           ORDER BY scores.aesthetic DESC NULLS LAST, sample_id) AS n FROM v)
            SELECT status, reason, scores.aesthetic, scores.clip_similarity, image.bytes, detail FROM ranked
            WHERE n <= {GRID} AND image.bytes IS NOT NULL ORDER BY status != 'kept', reason, n"""
    ).fetchall()
    kept = [p for p in picks if p[0] == "kept"][:GRID]
    rejected = [p for p in picks if p[0] != "kept"]
    rejected = sorted(rejected, key=lambda p: p[1] or "")[: GRID * 2]
    html = []
    for title, items in (("Kept (highest aesthetic)", kept), ("Rejected", rejected)):
        cells = []
        for status, reason, aesthetic, clip, data, detail in items:
            thumb = thumbnail(data)
            scores = f"aesthetic {aesthetic:.2f}" if aesthetic is not None else "not scored"
            scores += f" · clip {clip:.3f}" if clip is not None else ""
            caption = scores + ("" if status == "kept" else f" · {reason}")
            if status != "kept" and reason and reason.endswith("duplicate"):
                caption += f" ({detail[:60]})"
            cells.append(ctx.image(thumb, caption) if thumb else f"<div>{caption} (undecodable)</div>")
        html.append(f"<h4>{title}</h4><div style='display:flex;flex-wrap:wrap;gap:8px'>{''.join(cells) or 'none'}</div>")
    return "".join(html)


@section("Aesthetic and CLIP scores", order=40)
def render(ctx) -> str | None:
    query = verdict_query(ctx.build_dir)
    if query is None:
        return None
    con = ctx.con
    rows = con.execute(f"SELECT status, scores.aesthetic, scores.clip_similarity, detail FROM ({query})").fetchall()
    limits = thresholds([r[3] for r in rows])
    counts = con.execute(f"SELECT status, coalesce(reason, ''), count(*) FROM ({query}) GROUP BY ALL ORDER BY 3 DESC").fetchall()
    parts = [
        f"<p>{len(rows)} images checked, {sum(r[1] is not None for r in rows)} scored; thresholds: aesthetic ≥ {limits.get('aesthetic', '?')}, "
        f"CLIP similarity ≥ {limits.get('clip_similarity', '?')} (dashed lines).</p>",
        histograms(ctx, rows, limits),
        ctx.table(["status", "reason", "rows"], [list(c) for c in counts]),
        grid(ctx, con, query),
    ]
    return "".join(parts)
