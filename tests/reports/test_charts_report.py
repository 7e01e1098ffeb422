"""The charts report section shows rendered charts from a build's work files, one QA each."""

import base64
import importlib
from pathlib import Path

import pyarrow.parquet as pq

from stages.base import StageContext
from stages.chart_data import ChartTables
from stages.charts import RenderCharts


def _load_section_module():
    return importlib.import_module("pipeline.reports.charts")  # the real module: an import error fails the test


class Ctx:
    def __init__(self, build_dir: Path):
        self.build_dir = build_dir
        self.images = []

    def image(self, data: bytes, caption: str) -> str:
        self.images.append((data, caption))
        return f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode()}"><figcaption>{caption}</figcaption></figure>'


def test_grid_of_rendered_charts(tmp_path):
    ctx = StageContext(build_id="b", seed=1, recipe_dir=tmp_path, source="charts", task="understanding", build_dir=tmp_path)
    cfg = ChartTables.Config.model_validate({"kind": "chart_tables", "synthetic": 10}, context={"recipe_dir": tmp_path})
    src = ChartTables(cfg, ctx)
    table = next(src.read(tmp_path))
    out = RenderCharts(RenderCharts.Config(stage="render_charts", dpi=30), ctx).run(table)
    part = tmp_path / "work" / "charts" / "01-render_charts" / "part-00000.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(out, part)

    module = _load_section_module()
    rc = Ctx(tmp_path)
    html = module.render(rc)
    assert len(rc.images) == module.MAX_TILES
    assert all(cap.count(" Q: ") == 1 and " A: " in cap for _, cap in rc.images)
    assert len({cap.split("]")[0] for _, cap in rc.images}) >= 3  # several chart types shown
    assert html.count("<figure>") == module.MAX_TILES
    assert module.render(Ctx(tmp_path / "empty")) is None
