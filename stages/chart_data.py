"""Tables for the chart renderer: read CSV/Parquet files or generate plausible ones from a seed."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Iterator, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.schema import STATUS_FAILED, make_rows
from stages.base import Source, SourceConfig, register, resolve_paths
from stages.prompt_clean import unescape_entities

MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
# topic: (title, label name, labels, series names, unit, value range, ordered labels)
TOPICS = [
    ("Monthly rainfall", "Month", MONTHS, ["Rainfall"], "mm", (5, 220), True),
    ("Average temperature", "Month", MONTHS, ["Temperature"], "°C", (-8, 32), True),
    ("Company revenue", "Year", [str(y) for y in range(2010, 2024)], ["Revenue", "Profit"], "million USD", (10, 900), True),
    ("City population", "City", "Lagos Lima Oslo Pune Kyiv Doha Perth Quito Accra Hanoi".split(), ["Population"], "thousand", (150, 9000), False),
    ("Smartphone market share", "Brand", "Apex Nova Zen Orbit Pulse Vertex Lumo".split(), ["Share"], "%", (2, 35), False),
    ("Exam results", "Subject", "Maths Physics Biology History Art Music Chemistry".split(), ["Class A", "Class B"], "points", (40, 100), False),
    ("Electricity generation", "Source", "Coal Gas Solar Wind Hydro Nuclear Biomass".split(), ["2020", "2023"], "TWh", (5, 400), False),
    ("Website visitors", "Day", "Mon Tue Wed Thu Fri Sat Sun".split(), ["Visitors"], "visits", (200, 5000), True),
    ("Coffee exports", "Country", "Brazil Vietnam Colombia Ethiopia Honduras Peru Uganda".split(), ["Exports"], "kt", (50, 2600), False),
    ("Store sales by quarter", "Quarter", ["Q1", "Q2", "Q3", "Q4"], ["North", "South", "East"], "units", (100, 1500), True),
]


def synthetic_table(rng: random.Random) -> dict:
    """One plausible table: a topic, a contiguous run of labels, 1-3 series, fixed decimals."""
    title, label_name, labels, series, unit, (lo, hi), ordered = rng.choice(TOPICS)
    n = rng.randint(min(3, len(labels)), min(len(labels), 10))
    start = rng.randint(0, len(labels) - n) if ordered else 0
    picked = labels[start : start + n] if ordered else rng.sample(labels, n)
    decimals = rng.choice([0, 0, 1, 2])
    columns = series[: rng.randint(1, len(series))]
    rows = []
    for j, label in enumerate(picked):
        values = []
        for k in range(len(columns)):
            if ordered:  # a drifting series reads like a real trend
                base = lo + (hi - lo) * (0.3 + 0.4 * math.sin(j / 2 + k) * rng.random() + 0.05 * j)
            else:
                base = rng.uniform(lo, hi)
            values.append(round(min(hi, max(lo, base)), decimals) if decimals else int(round(min(hi, max(lo, base)))))
        rows.append([label, *values])
    if unit == "%" and len(columns) == 1:  # shares of a whole add up to 100
        total = sum(r[1] for r in rows)
        for r in rows:
            r[1] = round(100 * r[1] / total, decimals or 1)
    return {"title": title, "label": label_name, "series": columns, "unit": unit, "rows": rows, "topic": title}


class ChartTablesConfig(SourceConfig):
    paths: list[str] = []  # CSV or Parquet, one table per file; first string column = labels
    synthetic: int = Field(0, ge=0, description="tables to generate from the recipe seed")
    max_rows: int = Field(12, ge=1, description="longer tables are rejected: a chart shows at most this many labels")
    unit: str = ""
    # held-out tables for the evaluator: generated tables split by the hash of their key
    # (stages/shapes.py's rule), so a `split: heldout` source with the same `synthetic` count and
    # seed holds exactly the generated tables `train` lacks. Table files always go to train.
    split: Literal["all", "train", "heldout"] = "all"
    heldout_share: float = Field(0.2, gt=0.0, lt=1.0)

    @field_validator("paths")
    @classmethod
    def _exist(cls, value: list[str], info: ValidationInfo) -> list[str]:
        base = Path((info.context or {}).get("recipe_dir", "."))
        for item in value:
            if not resolve_paths(base, [item]):
                raise ValueError(f"no input file matches {item!r} (relative to {base})")
        return value

    @model_validator(mode="after")
    def _something(self):
        if not self.paths and not self.synthetic:
            raise ValueError("give table files in `paths` or a `synthetic` count")
        return self


class TableError(ValueError):
    """A table the renderer cannot chart; the message names the file, line and column."""


@register
class ChartTables(Source):
    """One work row per table; its data travels in `meta` as {title, label, series, unit, rows}."""

    name = "chart_tables"
    version = 2  # 2: HTML entities in labels and column names decoded
    Config = ChartTablesConfig
    task = "understanding"

    def files(self) -> list[Path]:
        # The generator reads no file: the recipe directory stands in as its one input so the
        # runner's per-file loop runs once (see report: a contract hook would be cleaner).
        files = resolve_paths(self.context.recipe_dir, self.config.paths) if self.config.split != "heldout" else []
        return files + ([self.context.recipe_dir] if self.config.synthetic else [])

    def read(self, path: Path) -> Iterator[pa.Table]:
        src = self.context.source
        if path.is_dir():
            rng = random.Random(self.context.seed)
            rows = [self._row(f"synthetic-{i:06d}", synthetic_table(rng)) for i in range(self.config.synthetic)]
            rows = [r for r in rows if self._in_split(r["source_key"])]
            for i in range(0, len(rows), 1024):
                yield make_rows(rows[i : i + 1024])
            return
        if self.config.split == "heldout":
            return
        try:
            table = load_table(path, self.config.max_rows)
            table["unit"] = table.get("unit") or self.config.unit
            row = self._row(path.name, table)
        except TableError as err:
            row = {"source": src, "source_key": path.name, "task": self.task, "status": STATUS_FAILED,
                   "reason": err.args[0], "detail": err.args[1]}
        yield make_rows([row])

    def _in_split(self, key: str) -> bool:
        from stages.shapes import heldout

        return self.config.split == "all" or heldout(key, self.config.heldout_share) == (self.config.split == "heldout")

    def _row(self, key: str, table: dict) -> dict:
        if self.config.split == "heldout":
            table = {**table, "split": "heldout"}  # what the evaluator looks for (model/eval_sets.py)
        return {"source": self.context.source, "source_key": key, "task": self.task, "meta": json.dumps(table, ensure_ascii=False)}


def load_table(path: Path, max_rows: int) -> dict:
    """A CSV/Parquet file -> table dict; raises TableError(reason, detail) for unusable data."""
    try:
        if path.suffix == ".parquet":
            data = pq.read_table(path)
            header_lines = 0
        else:  # every column as text: numbers are checked here so errors can name the line
            names = pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16)).column_names
            data = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))
            header_lines = 1
    except (pa.ArrowInvalid, OSError) as err:
        raise TableError("unreadable_table", f"{path.name}: {err}") from None
    if data.num_rows == 0 or data.num_columns < 2:
        raise TableError("empty_table", f"{path.name}: {data.num_rows} rows, {data.num_columns} columns; need a label column and a value column")
    if data.num_rows > max_rows:
        raise TableError("table_too_long", f"{path.name}: {data.num_rows} rows > max_rows {max_rows}")
    label, *series = data.column_names
    # scraped tables carry HTML entities ("AT&amp;T"): the chart must show the text they stand for
    labels = [unescape_entities(str(v)) if v is not None else "" for v in data.column(label).to_pylist()]
    columns = []
    for name in series:
        values = []
        for i, v in enumerate(data.column(name).to_pylist()):
            where = f"{path.name}:{i + 1 + header_lines} column {name!r}"
            try:
                num = float(v)
            except (TypeError, ValueError):
                raise TableError("non_numeric", f"{where}: {v!r} is not a number") from None
            if not math.isfinite(num):
                raise TableError("non_finite", f"{where}: {v!r}") from None
            values.append(int(num) if num.is_integer() and "." not in str(v) else num)
        columns.append(values)
    rows = [[lab, *vals] for lab, *vals in zip(labels, *columns)]
    title = path.stem.replace("_", " ").replace("-", " ").strip().capitalize()
    label, series = unescape_entities(label), [unescape_entities(s) for s in series]
    return {"title": title, "label": label, "series": series, "unit": "", "rows": rows, "topic": "file"}
