"""Report section: a grid of rendered charts and tables, one question and answer under each."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.report import section

MAX_TILES = 12


def rendered_samples(build_dir: Path, limit: int = MAX_TILES) -> list[dict]:
    """Kept rows of every source's render_charts step, one per chart type first, then the rest."""
    rows: list[dict] = []
    for part in sorted(build_dir.glob("work/*/*-render_charts/part-*.parquet")):
        table = pq.read_table(part, columns=["image", "conversation", "lineage", "status"])
        rows += table.filter(pc.equal(table.column("status"), "kept")).slice(0, limit * 2).to_pylist()
        if len(rows) >= limit * 4:
            break
    by_type: dict[str, list[dict]] = {}
    for row in rows:
        by_type.setdefault(json.loads(row["lineage"]["params"])["chart_type"], []).append(row)
    picked: list[dict] = []
    while len(picked) < limit and any(by_type.values()):
        for group in by_type.values():  # round-robin over chart types so the grid shows variety
            if group and len(picked) < limit:
                picked.append(group.pop(0))
    return picked


@section("Rendered charts and tables", order=40)
def render(ctx) -> str | None:
    samples = rendered_samples(ctx.build_dir)
    if not samples:
        return None
    tiles = []
    for row in samples:
        params = json.loads(row["lineage"]["params"])
        question = row["conversation"][0]["content"].replace("<image_placeholder>\n", "")
        caption = f"[{params['chart_type']} · {params['templates'][0]}] Q: {question} A: {row['conversation'][1]['content']}"
        tiles.append(f'<div class="tile">{ctx.image(row["image"]["bytes"], caption)}</div>')
    intro = "<p>Answers are computed from the table each chart was drawn from (lineage.params.data).</p>"
    return intro + '<div style="display:grid;grid-template-columns:repeat(3,1fr);gap:8px">' + "".join(tiles) + "</div>" + f"<!-- {html.escape(str(len(samples)))} tiles -->"
