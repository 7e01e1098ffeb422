"""The main job, as users run it: `janus-forge repro` builds the tiny data, trains I→II→III with an eval
after each stage, asserts the recipes' thresholds, reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_repro_end_to_end_then_rerun_resumes(tmp_path):
    out = tmp_path / "tiny"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline", "repro", "--out", str(out)]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stderr[-4000:]

    con = duckdb.connect(str(out / "build" / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT status FROM builds").fetchone() == ("succeeded",)
    runs = con.execute("SELECT source, stage, rows_in, rows_kept, rows_filtered, rows_failed FROM stage_runs").fetchall()
    assert {r[0] for r in runs} >= {"mj_prompts", "imagenet", "yfcc", "yfcc_t2i", "charts", "chartqa", "docs", "text",
                                    "shapes_class", "shapes_t2i", "shapes_qa", "shapes_t2i_eval", "charts_eval"}
    for source, stage, rows_in, kept, filtered, failed in runs:
        assert rows_in == kept + filtered + failed, (source, stage)
    stages = {r[1] for r in runs}
    assert {"generate_images", "score_images", "dedup_images", "download_images", "vq_tokenize", "render_charts"} <= stages
    # the deliberate bad inputs are all recorded, with reasons
    reasons = {r[0] for r in con.execute("SELECT DISTINCT reason FROM rejections").fetchall()}
    assert {"download_failed", "blocked_address", "video", "bad_json", "not_an_image", "missing_image", "low_aesthetic"} <= reasons
    # every training stage: whole batches of 16 at the paper's ratio
    ratios = {"stage1": (1, 0, 3), "stage2": (2, 3, 5), "stage3": (5, 1, 4)}
    for stage, ratio in ratios.items():
        manifest = json.loads((out / "build" / "shards" / stage / "_manifest.json").read_text())
        tasks = [t for f in manifest["shards"] for t in pq.read_table(out / "build" / "shards" / stage / f, columns=["task"]).column("task").to_pylist()]
        assert len(tasks) == manifest["batches"] * 16
        counts = [tasks.count(t) for t in ("understanding", "text", "generation")]
        assert all(abs(c - len(tasks) * r / sum(ratio)) <= 1 for c, r in zip(counts, ratio)), (stage, counts)
    gen = con.execute("SELECT count(*), count(image_tokens) FROM samples WHERE task = 'generation'").fetchone()
    assert gen[0] > 0 and gen[0] == gen[1]  # the trainer reads VQ ids, not JPEGs
    con.close()

    # the evidence: an eval after each stage and of the init, every threshold held, records kept
    checks = json.loads((out / "eval" / "checks.json").read_text())
    assert set(checks) == {"init", "stage1", "stage2", "stage3"}
    assert all(c["passed"] for items in checks.values() for c in items if c["required"]), checks
    stage1 = json.loads((out / "eval" / "stage1" / "eval.json").read_text())
    colour = stage1["summary"]["generation"]["cfg1"]["categories"]["colour"]["attributes"]["colour"]
    assert colour["accuracy"] >= 0.8 > colour["chance"]
    init = json.loads((out / "eval" / "init" / "eval.json").read_text())["summary"]
    assert init["generation"]["cfg1"]["overall"] <= init["generation"]["cfg1"]["chance"] + 0.1
    record = next(r for r in stage1["records"] if r["kind"] == "generation")
    assert (out / "eval" / "stage1" / record["image"]).is_file()
    # the synthetic share was rendered by the stage-I teacher, not a random model
    assert (out / "build" / "models" / "teacher" / "config.json").is_file()
    for stage in ("stage1", "stage2", "stage3"):
        assert list((out / "train" / stage / "final").glob("*.safetensors"))
    report = (out / "report.html").read_text()
    for title in ("Funnel per stage", "Shard mix per training stage", "Aesthetic and CLIP scores", "Rendered charts and tables",
                  "Training", "What the model can do (evaluation)"):
        assert f"<h2>{title}</h2>" in report
    assert report.count("data:image/png;base64") >= 8 and "kept by the filter" in report

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "(0 already done)" not in second.stderr  # every stage skipped its finished partitions
