"""Build traps on a real local Ray: a stage used twice in one chain, inputs edited in place."""

import shutil
from pathlib import Path

import duckdb
import pytest

from pipeline.recipe import load_recipe
from pipeline.runner import BuildError, BuildOptions, run_build

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "recipes" / "data" / "tiny" / "midjourney_prompts.jsonl"

TWICE_RECIPE = """
name: twice
seed: 7
rows_per_partition: 128
sources:
  mj_prompts:
    kind: midjourney_prompts
    paths: [tiny/midjourney_prompts.jsonl]
    steps:
      - {stage: clean_prompts, min_words: 3, max_chars: 600}
      - {stage: dedup_prompts, threshold: 0.8}
      - {stage: clean_prompts, min_words: 16, max_chars: 600}
mix:
  global_batch: 8
  rows_per_shard: 64
  stages:
    stage1: {ratio: {generation: 1}, sources: {mj_prompts: 1}, batches: 2}
"""


def _recipe(tmp_path: Path) -> Path:
    (tmp_path / "tiny").mkdir(exist_ok=True)
    shutil.copy(PROMPTS, tmp_path / "tiny")
    path = tmp_path / "twice.yaml"
    path.write_text(TWICE_RECIPE)
    return path


def test_a_stage_used_twice_keeps_both_steps_rejections(tmp_path, local_ray):
    out = tmp_path / "build"
    recipe = load_recipe(_recipe(tmp_path))
    for _ in range(2):  # the second run resumes and re-records: still both steps, no duplicates
        run_build(recipe, BuildOptions(out=out))
        con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
        runs = con.execute("SELECT step, stage, rows_filtered + rows_failed FROM stage_runs ORDER BY step").fetchall()
        by_step = dict(con.execute("SELECT step, count(*) FROM rejections WHERE stage = 'clean_prompts' GROUP BY step").fetchall())
        reasons = dict(con.execute("SELECT step, list(DISTINCT reason) FROM rejections GROUP BY step").fetchall())
        total = con.execute("SELECT count(*), count(DISTINCT (step, sample_id)) FROM rejections").fetchone()
        con.close()
        assert [r[1] for r in runs] == ["midjourney_prompts", "clean_prompts", "dedup_prompts", "clean_prompts"]
        assert by_step[1] == runs[1][2] > 0 and by_step[3] == runs[3][2] > 0
        assert "too_short" in reasons[3]  # the stricter second pass: rows the first one kept
        assert total[0] == total[1] == sum(r[2] for r in runs)


def test_an_input_edited_in_place_is_not_resumed_stale(tmp_path, local_ray, monkeypatch):
    monkeypatch.setenv("JANUS_FORGE_HASH_CACHE", str(tmp_path / "hashes.json"))
    out = tmp_path / "build"
    path = _recipe(tmp_path)
    run_build(load_recipe(path), BuildOptions(out=out))
    data = tmp_path / "tiny" / "midjourney_prompts.jsonl"
    text = data.read_bytes()
    assert b"a red circle" in text
    data.write_bytes(text.replace(b"a red circle", b"a tan circle"))  # same size, new content
    edited = load_recipe(path)
    with pytest.raises(BuildError, match="another recipe version"):  # not a silent, stale resume
        run_build(edited, BuildOptions(out=out))
    run_build(edited, BuildOptions(out=out, restart=True))
    con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
    prompts = [r[0] for r in con.execute("SELECT prompt FROM read_parquet(?)", [str(out / "work" / "mj_prompts" / "01-clean_prompts" / "*.parquet")]).fetchall()]
    con.close()
    assert any("a tan circle" in p for p in prompts if p) and not any("a red circle" in p for p in prompts if p)
