"""Render tables as bar/line/pie/scatter charts or table images, with questions computed from the data."""

from __future__ import annotations

import io
import json
import random
from typing import Callable, Literal

import pyarrow as pa
from matplotlib.figure import Figure
from pydantic import Field

from pipeline.schema import STATUS_FAILED, STATUS_KEPT, conform, make_rows, sample_id
from stages.base import Stage, StageConfig, register, with_verdicts
from stages.image_checks import decode

ChartType = Literal["bar", "line", "pie", "scatter", "table"]
FONTS = ["DejaVu Sans", "DejaVu Serif", "DejaVu Sans Mono", "STIXGeneral"]
PALETTES = ["tab10", "Set2", "Dark2", "viridis", "plasma", "Paired", "Accent", "cividis"]
BACKGROUNDS = ["white", "white", "#f7f7f7", "#fdf6e3", "#eef3f8"]


def fmt(v: float) -> str:
    """Numbers as a reader would say them: integers bare, others to at most 2 decimals."""
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}".rstrip("0").rstrip(".")


# -- questions: each returns (template, question, answer) or None when it does not apply -------
def _series(t: dict, rng: random.Random) -> tuple[str, list[str], list[float]]:
    k = rng.randrange(len(t["series"]))
    return t["series"][k], [r[0] for r in t["rows"]], [r[1 + k] for r in t["rows"]]


def q_value(t, rng, chart):
    s, labels, vals = _series(t, rng)
    i = rng.randrange(len(labels))
    return f"What is the value of {s} for {labels[i]}?", fmt(vals[i])


def q_max(t, rng, chart):
    s, labels, vals = _series(t, rng)
    return f"Which {t['label'].lower()} has the highest {s}?", labels[vals.index(max(vals))]


def q_min(t, rng, chart):
    s, labels, vals = _series(t, rng)
    return f"Which {t['label'].lower()} has the lowest {s}?", labels[vals.index(min(vals))]


def q_difference(t, rng, chart):
    s, labels, vals = _series(t, rng)
    if len(labels) < 2:
        return None
    i, j = rng.sample(range(len(labels)), 2)
    return f"What is the difference in {s} between {labels[i]} and {labels[j]}?", fmt(round(abs(vals[i] - vals[j]), 4))


def q_trend(t, rng, chart):
    if chart not in ("line", "bar"):
        return None
    s, labels, vals = _series(t, rng)
    word = "increase" if vals[-1] > vals[0] else "decrease" if vals[-1] < vals[0] else "stay the same"
    return f"Does {s} increase or decrease from {labels[0]} to {labels[-1]}?", word


def q_count(t, rng, chart):
    return f"How many {t['label'].lower()} categories are shown?", str(len(t["rows"]))


def q_sum(t, rng, chart):
    s, labels, vals = _series(t, rng)
    return f"What is the total {s} across all {t['label'].lower()} categories?", fmt(round(sum(vals), 4))


QUESTIONS: dict[str, Callable] = {
    "value_at": q_value, "max": q_max, "min": q_min, "difference": q_difference,
    "trend": q_trend, "count": q_count, "sum": q_sum,
}


def transcribe(t: dict) -> str:
    """The chart-to-table answer: a Markdown table of the underlying data."""
    head = [t["label"], *t["series"]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(r[0]), *(fmt(v) for v in r[1:])]) + " |" for r in t["rows"]]
    return "\n".join(lines)


# -- rendering ----------------------------------------------------------------------------
def pick_style(rng: random.Random) -> dict:
    return {
        "font": rng.choice(FONTS), "fontsize": rng.choice([8, 9, 10, 11, 12]), "palette": rng.choice(PALETTES),
        "background": rng.choice(BACKGROUNDS), "horizontal": rng.random() < 0.3, "grid": rng.random() < 0.5,
        "legend": rng.choice(["best", "upper right", "lower left", "outside"]), "value_labels": rng.random() < 0.7,
        "aspect": rng.choice([(6.4, 4.8), (8.0, 4.5), (5.0, 5.0), (7.0, 5.0)]), "marker": rng.choice(["o", "s", "^", "D"]),
    }


def _colors(style: dict, n: int):
    from matplotlib import colormaps

    cmap = colormaps[style["palette"]]
    return [cmap(i / max(1, n - 1)) if cmap.N > 32 else cmap(i % cmap.N) for i in range(n)]


def _bar(ax, t, style):
    labels, n = [r[0] for r in t["rows"]], len(t["series"])
    width = 0.8 / n
    for k, (name, color) in enumerate(zip(t["series"], _colors(style, n))):
        pos = [i + (k - (n - 1) / 2) * width for i in range(len(labels))]
        vals = [r[1 + k] for r in t["rows"]]
        bars = (ax.barh if style["horizontal"] else ax.bar)(pos, vals, width, label=name, color=color)
        if style["value_labels"] or n == 1:  # values must be readable for value questions
            ax.bar_label(bars, labels=[fmt(v) for v in vals], fontsize=style["fontsize"] - 2)
    (ax.set_yticks if style["horizontal"] else ax.set_xticks)(range(len(labels)), labels, rotation=0 if style["horizontal"] or len(labels) < 7 else 45)


def _line(ax, t, style):
    labels = [r[0] for r in t["rows"]]
    for k, (name, color) in enumerate(zip(t["series"], _colors(style, len(t["series"])))):
        vals = [r[1 + k] for r in t["rows"]]
        ax.plot(labels, vals, marker=style["marker"], label=name, color=color)
        for x, v in zip(labels, vals):
            ax.annotate(fmt(v), (x, v), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=style["fontsize"] - 2)
    if len(labels) > 6:
        ax.tick_params(axis="x", rotation=45)


def _pie(ax, t, style):
    vals = [r[1] for r in t["rows"]]
    ax.pie(vals, labels=[f"{r[0]} ({fmt(r[1])})" for r in t["rows"]], colors=_colors(style, len(vals)),
           startangle=90 if style["horizontal"] else 0, textprops={"fontsize": style["fontsize"] - 1})
    ax.axis("equal")


def _scatter(ax, t, style):
    xs, ys = [r[1] for r in t["rows"]], [r[2] for r in t["rows"]]
    ax.scatter(xs, ys, marker=style["marker"], color=_colors(style, 1)[0])
    for r, x, y in zip(t["rows"], xs, ys):
        ax.annotate(f"{r[0]} ({fmt(y)})", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=style["fontsize"] - 2)
    ax.set_xlabel(t["series"][0])
    ax.set_ylabel(t["series"][1])


def _table(ax, t, style):
    ax.axis("off")
    cells = [[str(r[0]), *(fmt(v) for v in r[1:])] for r in t["rows"]]
    tab = ax.table(cellText=cells, colLabels=[t["label"], *t["series"]], loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(style["fontsize"])
    tab.scale(1, 1.4)
    header = _colors(style, 1)[0]
    for (row, _), cell in tab.get_celld().items():
        if row == 0:
            cell.set_facecolor(header)
            cell.set_text_props(color="white", weight="bold")


RENDERERS = {"bar": _bar, "line": _line, "pie": _pie, "scatter": _scatter, "table": _table}


def applicable(chart: str, t: dict) -> bool:
    if chart == "pie":  # a pie needs one all-positive series
        return len(t["series"]) == 1 and all(r[1] > 0 for r in t["rows"])
    if chart == "scatter":
        return len(t["series"]) >= 2
    return True


def render(t: dict, chart: str, style: dict, dpi: int) -> bytes:
    """PNG bytes of one chart; matplotlib's object API, no pyplot state, so workers can share a process."""
    fig = Figure(figsize=style["aspect"], dpi=dpi, facecolor=style["background"])
    ax = fig.add_subplot()
    ax.set_facecolor(style["background"])
    with _rc(style):
        RENDERERS[chart](ax, t, style)
        unit = f" ({t['unit']})" if t.get("unit") else ""
        ax.set_title(t["title"] + unit, fontsize=style["fontsize"] + 2, family=style["font"])
        if chart in ("bar", "line"):
            if style["grid"]:
                ax.grid(True, alpha=0.3)
            if len(t["series"]) > 1:
                outside = style["legend"] == "outside"
                ax.legend(loc="upper left" if outside else style["legend"], bbox_to_anchor=(1.01, 1) if outside else None, fontsize=style["fontsize"] - 1)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _rc(style: dict):
    from matplotlib import rc_context

    return rc_context({"font.family": style["font"], "font.size": style["fontsize"]})


class RenderChartsConfig(StageConfig):
    chart_types: list[ChartType] = ["bar", "line", "pie", "scatter", "table"]
    charts_per_table: int = Field(2, ge=1)
    questions_per_chart: int = Field(3, ge=1)
    templates: list[Literal["value_at", "max", "min", "difference", "trend", "count", "sum"]] = list(QUESTIONS)
    transcription: bool = True  # add a chart -> table turn
    dpi: int = Field(80, ge=30, le=300)


@register
class RenderCharts(Stage):
    """Each kept table row fans out into `charts_per_table` rendered charts with computed QA turns."""

    name = "render_charts"
    Config = RenderChartsConfig
    needs = ("meta",)
    adds = ("image", "width", "height", "conversation", "lineage")
    batch_size = 16

    def fan_out(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            if row["status"] != STATUS_KEPT:
                rows.append(row)
                continue
            t = json.loads(row["meta"])
            rng = random.Random(f"{self.context.seed}:{row['sample_id']}")
            types = [c for c in self.config.chart_types if applicable(c, t)]
            if not types:
                rows.append({**row, "status": STATUS_FAILED, "reason": "no_chart_type", "detail": f"none of {self.config.chart_types} fits this table"})
                continue
            for n in range(self.config.charts_per_table):
                chart = types[(rng.randrange(len(types)) + n) % len(types)]
                key = f"{row['source_key']}#{n}-{chart}"
                rows.append({**row, "source_key": key, "sample_id": sample_id(row["source"], key),
                             "lineage": {"build_id": self.context.build_id, "parent_ids": [row["sample_id"]], "generator": "chart_renderer",
                                         "seed": rng.randrange(2**31), "params": {"chart_type": chart}}})
        return make_rows(rows) if rows else batch

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        verdicts = []
        for row in rows:
            if row["status"] != STATUS_KEPT:
                verdicts.append((row["status"], row["reason"], row["detail"]))
                continue
            t, lineage = json.loads(row["meta"]), row["lineage"]
            chart = json.loads(lineage["params"])["chart_type"]
            rng = random.Random(lineage["seed"])
            style = pick_style(rng)
            turns, templates = self._questions(t, chart, rng)
            png = render(t, chart, style, self.config.dpi)
            row["width"], row["height"] = decode(png).size  # the one decoder, even for our own renders
            row["image"] = {"bytes": png, "path": f"{row['sample_id']}.png"}
            row["conversation"] = turns
            lineage["params"] = json.dumps({"chart_type": chart, "templates": templates, "style": style, "data": t}, sort_keys=True, ensure_ascii=False)
            verdicts.append((STATUS_KEPT, None, None))
        out = pa.Table.from_pylist(rows, schema=conform(batch).schema)
        return with_verdicts(out, verdicts)

    def _questions(self, t: dict, chart: str, rng: random.Random) -> tuple[list[dict], list[str]]:
        names = list(self.config.templates)
        rng.shuffle(names)
        turns, used = [], []
        for name in names:
            qa = QUESTIONS[name](t, rng, chart)
            if qa is None:
                continue
            turns += [{"role": "user", "content": qa[0]}, {"role": "assistant", "content": qa[1]}]
            used.append(name)
            if len(used) == self.config.questions_per_chart:
                break
        if self.config.transcription:
            what = "table" if chart == "table" else "chart"
            turns += [{"role": "user", "content": f"Convert the {what} into a table."}, {"role": "assistant", "content": transcribe(t)}]
            used.append("transcription")
        turns[0] = {"role": "user", "content": "<image_placeholder>\n" + turns[0]["content"]}
        return turns, used
