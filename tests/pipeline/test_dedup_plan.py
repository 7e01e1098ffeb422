"""Distributed dedup plans (pipeline/dedup_plan.py) on a real local Ray: equal to the stages'
single-process plan(), and build-wide across sources through the runner."""

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import workdir
from pipeline.dedup_plan import Member, plan
from pipeline.recipe import RecipeError, load_recipe
from pipeline.runner import BuildOptions, run_build
from pipeline.schema import make_rows
from stages.base import StageContext, kept
from stages.dedup_images import DedupImages, DedupImagesConfig
from stages.dedup_shared import decisions_file
from stages.prompt_clean import CleanPrompts
from stages.prompt_dedup import DedupPrompts
from stages.prompt_source import MidjourneyPrompts
from stages.score import EMBEDDING, PIXEL_HASH

TINY = Path(__file__).resolve().parents[2] / "recipes" / "data" / "tiny"
CTX = StageContext(build_id="b", seed=0, recipe_dir=TINY, source="a", task="generation")


def write_members(tmp: Path, table: pa.Table, sources: list[str], rows: int) -> list[Member]:
    """Split a table between sources, each into partitions of `rows` (what a build's step dirs hold)."""
    members, step = [], -(-table.num_rows // len(sources))
    for k, source in enumerate(sources):
        part_of = table.slice(k * step, step)
        parts = [f"part-00000-{i // rows:05d}.parquet" for i in range(0, part_of.num_rows, rows)]
        for i, name in enumerate(parts):
            workdir.write_part(tmp / source / name, part_of.slice(i * rows, rows))
        members.append(Member(source, tmp / source, tuple(parts)))
    return members


def planned(plan_dir: Path, members: list[Member]) -> dict[str, tuple[str, str]]:
    out = {}
    for m in members:
        for p in m.parts:  # every partition has its file, empty or not
            t = pq.read_table(decisions_file(plan_dir, m.source, p))
            out.update(zip(t["sample_id"].to_pylist(), zip(t["reason"].to_pylist(), t["detail"].to_pylist())))
    return out


def test_prompt_plan_on_ray_equals_the_single_process_plan(tmp_path, local_ray):
    config = MidjourneyPrompts.Config.model_validate({"kind": "midjourney_prompts", "paths": ["midjourney_prompts.jsonl"]},
                                                     context={"recipe_dir": TINY})
    rows = pa.concat_tables(MidjourneyPrompts(config, CTX).read(TINY / "midjourney_prompts.jsonl"))
    cleaned = CleanPrompts(CleanPrompts.Config(stage="clean_prompts", min_words=3), CTX).run(rows)
    reference = DedupPrompts(DedupPrompts.Config(stage="dedup_prompts"), CTX)
    reference.plan(kept(cleaned).select(["sample_id", "prompt"]).sort_by("sample_id"))
    reasons = {r for r, _ in reference._dropped.values()}
    assert reasons == {"duplicate", "near_duplicate"} and len(reference._dropped) > 30
    # two sources, small partitions, and shards/chunks small enough that pairs cross every boundary
    members = write_members(tmp_path, cleaned, ["a", "b"], rows=50)
    distributed = DedupPrompts.Config(stage="dedup_prompts", chunk_rows=120, shard_rows=100)
    plan_dir = plan(distributed, members, tmp_path / "plan")
    assert json.loads((plan_dir / "_plan.json").read_text())["shards"] == 5
    assert planned(plan_dir, members) == reference._dropped
    # process() from the plan on disk gives each partition the reference's verdicts
    stage = DedupPrompts(distributed, CTX)
    stage.use_plan(plan_dir)
    stage.open_partition(members[0].parts[1])
    part = pq.read_table(members[0].prev_dir / members[0].parts[1])
    assert stage.run(part).to_pylist() == reference.run(part).to_pylist()


def image_rows(n_base: int, seed: int = 0) -> tuple[pa.Table, set[tuple[str, str]]]:
    """Random pictures (embeddings), each with planted near copies and some exact copies."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n_base, 32)).astype(np.float32)
    specs, planted = [], []
    for i, v in enumerate(base):
        specs.append((f"b{i}", f"h{i}", v, float(rng.uniform(4, 7))))
        for j in range(int(rng.integers(0, 3))):
            specs.append((f"b{i}n{j}", f"h{i}n{j}", v + 0.05 * rng.normal(size=32).astype(np.float32), float(rng.uniform(4, 7))))
            planted.append((f"b{i}", f"b{i}n{j}"))
        if i % 7 == 0:
            specs.append((f"b{i}x", f"h{i}", v, float(rng.uniform(4, 7))))  # same decoded pixels
    table = make_rows([{"task": "generation", "source": "s", "source_key": k, "prompt": "p", "pixel_hash": h,
                        "clip_embedding": e.tolist(), "scores": {"aesthetic": a, "clip_similarity": 0.3}} for k, h, e, a in specs],
                      extra=[EMBEDDING, PIXEL_HASH])
    return table, planted


def test_image_plan_on_ray_equals_single_process_with_one_cluster_and_keeps_recall_with_many(tmp_path, local_ray):
    table, planted = image_rows(300)
    config = DedupImagesConfig(near_threshold=0.99, chunk_rows=200, shard_rows=300)
    reference = DedupImages(config, CTX)
    reference.plan(table.sort_by("sample_id").select(["sample_id", *reference.needs]))
    want = {sid: (reason, f"duplicate of {of} ({why})") for sid, (reason, of, why) in reference.duplicates.items()}
    assert {r for r, _ in want.values()} == {"exact_duplicate", "near_duplicate"}
    members = write_members(tmp_path, table, ["a", "b"], rows=100)
    one = plan(config, members, tmp_path / "one")
    assert json.loads((one / "_plan.json").read_text())["clusters"] == 1
    assert planned(one, members) == want
    # k-means into ~10 clusters: a planted pair split between clusters is missed; measure how many
    many = plan(config.model_copy(update={"cluster_rows": 60}), members, tmp_path / "many")
    assert json.loads((many / "_plan.json").read_text())["clusters"] >= 8
    got = planned(many, members)
    key = dict(zip(table["source_key"].to_pylist(), table["sample_id"].to_pylist()))
    dropped_pairs = [p for p in planted if key[p[0]] in want or key[p[1]] in want]
    found = [p for p in dropped_pairs if key[p[0]] in got or key[p[1]] in got]
    recall = len(found) / len(dropped_pairs)
    same = sum(got.get(s) == d for s, d in want.items()) / len(want)
    print(f"planted near pairs found: {recall:.3f} ({len(found)}/{len(dropped_pairs)}); decisions equal to plan(): {same:.3f}")
    assert recall >= 0.95
    exact = {s: d for s, d in want.items() if d[0] == "exact_duplicate"}  # hash groups never split
    assert {s: d for s, d in got.items() if d[0] == "exact_duplicate"} == exact


CROSS_RECIPE = """
name: cross
rows_per_partition: 3
sources:
  mj_prompts:
    kind: midjourney_prompts
    paths: [mj.jsonl]
    steps:
      - {stage: clean_prompts, min_words: 3}
      - &dedup {stage: dedup_prompts, threshold: 0.8, scope: build}
  yfcc_t2i:
    kind: yfcc_metadata
    task: generation
    paths: [yfcc.tsv]
    steps:
      - {stage: yfcc_captions, licenses: [Attribution License, Attribution-ShareAlike License], english_only: true}
      - *dedup
mix:
  global_batch: 4
  stages:
    stage2: {ratio: {generation: 1}, sources: {mj_prompts: 1, yfcc_t2i: 1}, batches: 2}
"""


def test_build_dedups_prompts_across_sources(tmp_path, local_ray):
    (tmp_path / "yfcc.tsv").write_text("".join((TINY / "yfcc100m_sample.tsv").read_text().splitlines(keepends=True)[:4]))
    mj = ["A red boat in the harbour, taken on a walk. Afternoon light --ar 16:9",  # yfcc line 0's caption
          "a cyberpunk city at night with neon lights", "a watercolor fox sleeping in the snow", "a cyberpunk city at night with neon lights"]
    (tmp_path / "mj.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in mj))
    (tmp_path / "r.yaml").write_text(CROSS_RECIPE)
    out = tmp_path / "build"
    build_id = run_build(load_recipe(tmp_path / "r.yaml"), BuildOptions(out=out))
    con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
    runs = con.execute("SELECT source, stage, rows_in, rows_kept, rows_filtered, rows_failed FROM stage_runs "
                       "WHERE build_id = ? AND stage = 'dedup_prompts' ORDER BY source", [build_id]).fetchall()
    assert [(r[0], r[2], r[3] + r[4] + r[5]) for r in runs] == [("mj_prompts", 4, 4), ("yfcc_t2i", 4, 4)]
    dups = con.execute("SELECT sample_id, source, reason, detail FROM rejections WHERE reason IN ('duplicate', 'near_duplicate') "
                       "ORDER BY source").fetchall()
    con.close()
    rows = {r["sample_id"]: r for src in ("mj_prompts", "yfcc_t2i")
            for r in pq.read_table(out / "work" / src / "02-dedup_prompts").to_pylist()}
    # the in-source copy and the cross-source copy, each rejected once, naming the prompt kept
    assert sorted(r[2] for r in dups) == ["duplicate", "duplicate"]
    cross = [r for r in dups if rows[r[3]]["source"] != r[1]]
    assert len(cross) == 1 and rows[cross[0][3]]["status"] == "kept"
    assert {rows[cross[0][0]]["prompt"].casefold().replace(",", "").replace(".", ""),
            rows[cross[0][3]]["prompt"].casefold().replace(",", "").replace(".", "")} == {"a red boat in the harbour taken on a walk afternoon light"}
    assert json.loads((out / "work" / "_plans" / "dedup_prompts" / "_plan.json").read_text())["sources"] == ["mj_prompts", "yfcc_t2i"]
    shutil.rmtree(out / "shards")
    run_build(load_recipe(tmp_path / "r.yaml"), BuildOptions(out=out))  # resume: all done, no new plan needed
    assert (out / "shards" / "stage2").is_dir()


def test_build_scope_steps_must_agree(tmp_path):
    (tmp_path / "yfcc.tsv").write_text((TINY / "yfcc100m_sample.tsv").read_text())
    (tmp_path / "mj.jsonl").write_text(json.dumps({"prompt": "a watercolor fox sleeping in the snow"}) + "\n")
    (tmp_path / "r.yaml").write_text(CROSS_RECIPE.replace("      - *dedup", "      - {stage: dedup_prompts, threshold: 0.7, scope: build}"))
    with pytest.raises(RecipeError, match="same settings in every source"):
        load_recipe(tmp_path / "r.yaml")
