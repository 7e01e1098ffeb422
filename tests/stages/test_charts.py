"""Chart tables (files and generated) and the renderer with computed answers."""

import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stages.base import StageContext
from stages.chart_data import ChartTables, synthetic_table
from stages.charts import QUESTIONS, RenderCharts, fmt, render, pick_style, transcribe


def ctx(tmp_path, seed=0):
    return StageContext(build_id="b", seed=seed, recipe_dir=tmp_path, source="charts", task="understanding", build_dir=tmp_path)


def source(tmp_path, **kw):
    cfg = ChartTables.Config.model_validate({"kind": "chart_tables", **kw}, context={"recipe_dir": tmp_path})
    return ChartTables(cfg, ctx(tmp_path))


def read_all(src):
    return pa.concat_tables([t for p in src.files() for t in src.read(p)])


def test_bad_tables_are_rejections_naming_file_line_and_column(tmp_path):
    (tmp_path / "good.csv").write_text("Fruit,Sold\nApple,12\nPear,7.5\nPlum,3\n")
    (tmp_path / "nan.csv").write_text("Fruit,Sold\nApple,12\nPear,nan\n")
    (tmp_path / "inf.csv").write_text("Fruit,Sold\nApple,inf\n")
    (tmp_path / "text.csv").write_text("Fruit,Sold\nApple,12\nPear,lots\n")
    (tmp_path / "empty.csv").write_text("Fruit,Sold\n")
    pq.write_table(pa.table({"Team": ["A", "B"], "Wins": [3, 5], "Losses": [2, 1]}), tmp_path / "t.parquet")
    table = read_all(source(tmp_path, paths=["*.csv", "t.parquet"]))
    got = {r["source_key"]: r for r in table.to_pylist()}
    assert len(got) == 6
    assert got["good.csv"]["status"] == "kept" and json.loads(got["good.csv"]["meta"])["rows"][1] == ["Pear", 7.5]
    assert (got["nan.csv"]["reason"], got["nan.csv"]["detail"]) == ("non_finite", "nan.csv:3 column 'Sold': 'nan'")
    assert got["inf.csv"]["reason"] == "non_finite"
    assert got["text.csv"]["reason"] == "non_numeric" and "text.csv:3" in got["text.csv"]["detail"]
    assert got["empty.csv"]["reason"] == "empty_table"
    assert json.loads(got["t.parquet"]["meta"])["series"] == ["Wins", "Losses"]


def test_config_needs_paths_or_synthetic(tmp_path):
    with pytest.raises(ValueError, match="synthetic"):
        source(tmp_path)
    with pytest.raises(ValueError, match="no input file"):
        source(tmp_path, paths=["missing.csv"])


def test_synthetic_tables_are_seeded_and_varied(tmp_path):
    a = read_all(source(tmp_path, synthetic=30)).column("meta").to_pylist()
    assert a == read_all(source(tmp_path, synthetic=30)).column("meta").to_pylist()
    tables = [json.loads(m) for m in a]
    assert len({t["topic"] for t in tables}) >= 5 and len({len(t["rows"]) for t in tables}) >= 3
    assert any(len(t["series"]) > 1 for t in tables)


def test_answers_are_computed_from_the_data():
    t = {"title": "T", "label": "City", "series": ["Pop", "Area"], "unit": "", "rows": [["A", 10, 5.5], ["B", 30, 2], ["C", 20, 1.25]]}

    class First(random.Random):
        def randrange(self, n):  # always the first series
            return 0

        def sample(self, seq, k):
            return list(seq)[:k]

    rng = First()
    assert QUESTIONS["max"](t, rng, "bar") == ("Which city has the highest Pop?", "B")
    assert QUESTIONS["min"](t, rng, "bar")[1] == "A"
    assert QUESTIONS["difference"](t, rng, "bar") == ("What is the difference in Pop between A and B?", "20")
    assert QUESTIONS["sum"](t, rng, "bar")[1] == "60"
    assert QUESTIONS["trend"](t, rng, "line")[1] == "increase"
    assert QUESTIONS["trend"](t, rng, "pie") is None
    assert QUESTIONS["count"](t, rng, "bar")[1] == "3"
    assert QUESTIONS["value_at"](t, rng, "bar") == ("What is the value of Pop for A?", "10")
    assert transcribe(t).splitlines()[2] == "| A | 10 | 5.5 |"
    assert fmt(1.25) == "1.25" and fmt(3.0) == "3" and fmt(2.10) == "2.1"


def test_render_stage_fans_out_and_records_lineage(tmp_path):
    (tmp_path / "bad.csv").write_text("A,B\nx,oops\n")
    table = read_all(source(tmp_path, synthetic=4, paths=["bad.csv"]))
    stage = RenderCharts(RenderCharts.Config(stage="render_charts", charts_per_table=3, dpi=40), ctx(tmp_path))
    out = stage.run(table)
    assert out.num_rows == 4 * 3 + 1  # the bad table passes through as its one failed row
    kept = [r for r in out.to_pylist() if r["status"] == "kept"]
    assert len(kept) == 12 and len({r["sample_id"] for r in kept}) == 12
    parents = {r["sample_id"] for r in table.to_pylist()}
    for r in kept:
        params = json.loads(r["lineage"]["params"])
        assert params["chart_type"] in ("bar", "line", "pie", "scatter", "table")
        assert r["lineage"]["parent_ids"][0] in parents and r["lineage"]["generator"] == "chart_renderer"
        assert params["templates"][-1] == "transcription" and len(params["templates"]) == 4
        assert Image.open(io.BytesIO(r["image"]["bytes"])).size == (r["width"], r["height"])
        conv = r["conversation"]
        assert conv[0]["content"].startswith("<image_placeholder>\n") and len(conv) == 8
        assert conv[-1]["content"] == transcribe(params["data"])
    again = stage.run(table)
    assert again.column("conversation").to_pylist() == out.column("conversation").to_pylist()  # seeded


def test_styles_vary_images():
    t = synthetic_table(random.Random(3))
    rng = random.Random(0)
    pngs = {render(t, "bar", pick_style(rng), 40) for _ in range(4)}
    assert len(pngs) == 4


def test_percentage_shares_add_up():
    rng = random.Random(0)
    shares = [t for t in (synthetic_table(rng) for _ in range(200)) if t["unit"] == "%"]
    assert shares and all(abs(sum(r[1] for r in t["rows"]) - 100) < 1 for t in shares)
