"""`janus-forge eval` on a real build's held-out sets: records a person can re-check, scores at chance for an untrained model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from model.eval_checks import check, detect
from model.eval_sets import load_heldout
from pipeline.recipe import load_recipe
from pipeline.runner import BuildOptions, run_build

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a real Ray build of the held-out sources first

RECIPE = """
name: eval-sets
seed: 7
sources:
  shapes_qa: {kind: shapes, mode: qa, count: 60}
  shapes_t2i_eval: {kind: shapes, mode: caption, count: 400, split: heldout}
  shapes_qa_eval: {kind: shapes, mode: qa, count: 300, split: heldout}
  shapes_text_eval: {kind: shapes, mode: text, count: 200, split: heldout}
  charts_eval:
    kind: chart_tables
    synthetic: 40  # 4 land on the held-out side of the hash split
    split: heldout
    steps:
      - {stage: render_charts, charts_per_table: 1, questions_per_chart: 2, dpi: 40}
      - {stage: preprocess_images, mode: understanding, resolution: 32}
mix:
  global_batch: 4
  rows_per_shard: 64
  stages:
    stage1: {ratio: {understanding: 1}, sources: {shapes_qa: 1}, batches: 4}
"""


@pytest.fixture(scope="module")
def eval_build(tmp_path_factory, local_ray) -> Path:
    root = tmp_path_factory.mktemp("evalbuild")
    (root / "eval.yaml").write_text(RECIPE)
    run_build(load_recipe(root / "eval.yaml"), BuildOptions(out=root / "build"))
    return root / "build"


def _eval(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", "eval", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_heldout_sets_hold_only_heldout_rows(eval_build):
    sets = load_heldout(eval_build)
    sizes = sets.sizes()
    assert all(sizes[k] > 0 for k in ("generation", "shapes_qa", "chart_qa", "text")), sizes
    assert {r["spec"]["category"] for r in sets.generation} == {"single_object", "colour", "count", "position", "colour_shape"}
    assert len({r["sample_id"] for r in sets.chart_qa}) == len(sets.chart_qa)  # each chart question on its own
    # what training reads (the mixed shards) and the held-out sets share no sample and no image
    from model.shards import ShardSet

    shards = list(ShardSet.open(eval_build, "stage1").iter_rows())
    assert len(shards) == 16
    assert not {r["sample_id"] for r in shards} & {r["sample_id"] for r in sets.shapes_qa}
    assert not {r["image"]["bytes"] for r in shards} & {r["image"] for r in sets.shapes_qa}


def test_eval_cli_writes_records_and_images_and_an_untrained_model_scores_at_chance(eval_build, tiny_dir, tmp_path):
    out = tmp_path / "eval"
    done = _eval(tiny_dir, "--data", eval_build, "--out", out, "--per-category", "6", "--max-questions", "40",
                 "--guidance", "5", "--guidance", "1", "--batch-size", "8")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    summary, records = result["summary"], result["records"]
    gen = [r for r in records if r["kind"] == "generation"]
    per_category = Counter(r["spec"]["category"] for r in load_heldout(eval_build).generation)
    assert len(gen) == 2 * sum(min(6, n) for n in per_category.values()) and {r["guidance"] for r in gen} == {5.0, 1.0}
    for r in gen[:10]:  # every verdict can be re-checked by hand from the saved image
        image = Image.open(out / r["image"])
        assert image.size == (32, 32)
        from stages.shapes_world import parse_prompt

        assert check(parse_prompt(r["prompt"]), detect(image))["passed"] == r["passed"]
    assert {"prompt", "expected", "got", "passed", "category"} <= set(gen[0])
    for name in ("shapes_qa", "chart_qa"):
        u = summary["understanding"][name]
        assert u["n"] == len([r for r in records if r["kind"] == name]) > 0
        assert 0 < u["majority"] <= 1 and 0 < u["chance"] <= 1
        assert u["accuracy"] <= max(u["majority"], u["chance"]) + 0.15  # random weights know nothing
        assert {"question", "expected", "got", "passed", "type"} <= set(next(r for r in records if r["kind"] == name))
    for scale in ("cfg5", "cfg1"):
        g = summary["generation"][scale]
        assert set(g["categories"]) == {"single_object", "colour", "count", "position", "colour_shape"}
        assert g["overall"] <= g["chance"] + 0.15  # (the repro checks the init at 40 prompts per category)
    assert summary["text"]["perplexity"] > 1
    assert '"generation cfg5"' in done.stdout


def test_eval_of_a_build_without_heldout_sets_is_a_clear_error(tiny_dir, tmp_path):
    (tmp_path / "work").mkdir()
    done = _eval(tiny_dir, "--data", tmp_path, "--out", tmp_path / "eval")
    assert done.returncode == 2
    assert "janus-forge eval: error:" in done.stderr and "heldout" in done.stderr
    done = _eval(tmp_path / "nowhere", "--data", tmp_path, "--out", tmp_path / "eval")
    assert done.returncode == 2 and "does not exist" in done.stderr
