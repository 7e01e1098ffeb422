"""The shipped tiny ingest recipe validates and every source runs through its steps, rows accounted for."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.recipe import load_recipe
from stages.base import SOURCES, STAGES, StageContext, kept

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "data" / "ingest_tiny.yaml"


def run_source(recipe, name, build_dir):
    """What the runner does for one source, minus Ray: read every file, then each step in order."""
    plan = recipe.sources[name]
    ctx = StageContext(build_id="t", seed=recipe.seed, recipe_dir=recipe.dir, source=name, task=plan.task, build_dir=build_dir)
    src = SOURCES[plan.config.kind](plan.config, ctx)
    src.preflight()
    table = pa.concat_tables([t for p in src.files() for t in src.read(p)])
    history = [table]
    for step in plan.steps:
        stage = STAGES[step.stage](step, ctx)
        stage.preflight()
        if stage.is_global:
            k = kept(table).sort_by("sample_id")
            stage.plan(k.select(["sample_id", *stage.needs]))
        table = stage.run(table)
        history.append(table)
    return history


@pytest.mark.slow  # one real img2dataset run (~10-30 s on a shared 2-core box)
def test_tiny_ingest_recipe_end_to_end(tmp_path):
    recipe = load_recipe(RECIPE)
    results = {name: run_source(recipe, name, tmp_path) for name in recipe.sources}

    yfcc = results["yfcc"]
    assert yfcc[0].num_rows == yfcc[-1].num_rows == 18  # 17 records + 1 malformed line, none lost
    reasons = Counter(yfcc[-1].column("reason").to_pylist())
    assert reasons == Counter({None: 12, "bad_column_count": 1, "no_caption": 1, "video": 1, "all_markup": 1,
                               "download_failed": 1, "blocked_address": 1})
    final = kept(yfcc[-1])
    assert set(final.column("width").to_pylist()) == {32} and set(final.column("height").to_pylist()) == {32}

    charts = results["charts"][-1]
    assert kept(charts).num_rows == (6 + 1) * 2  # 6 synthetic + fruit_sales, two charts each
    assert pc.sum(pc.equal(charts.column("reason"), "non_finite")).as_py() == 1

    chartqa = results["chartqa"][-1]
    assert Counter(chartqa.column("reason").to_pylist()) == Counter({None: 3, "missing_image": 1})
    assert Counter(results["docs"][-1].column("reason").to_pylist()) == Counter({None: 1, "no_image": 1})
    text = results["text"][-1]
    assert Counter(text.column("reason").to_pylist()) == Counter({None: 12, "duplicate": 1, "too_short": 1, "no_text": 1})
    imagenet = results["imagenet"][-1]
    assert Counter(imagenet.column("reason").to_pylist()) == Counter({None: 12, "not_an_image": 1})
    assert set(kept(imagenet).column("prompt").to_pylist()) == {"tench", "goldfish", "brambling"}
