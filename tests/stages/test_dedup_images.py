"""dedup_images: build-wide exact and near-duplicate removal through plan() + process()."""

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.schema import make_rows
from stages.base import StageContext
from stages.dedup_images import DedupImages, DedupImagesConfig
from stages.score import EMBEDDING, PIXEL_HASH, ScoreConfig, ScoreImages
from tests.stages.tiny_clip import image_bytes, make_tiny_clip

CTX = StageContext(build_id="b", seed=0, recipe_dir=".", source="synthetic", task="generation")


def unit(v):
    v = np.asarray(v, np.float32)
    return (v / np.linalg.norm(v)).tolist()


def rows(specs):
    """specs: (key, pixel_hash, embedding, aesthetic)."""
    return make_rows([{"task": "generation", "source": "synthetic", "source_key": k, "prompt": "p", "pixel_hash": h,
                       "clip_embedding": e, "scores": {"aesthetic": a, "clip_similarity": 0.3}} for k, h, e, a in specs],
                     extra=[EMBEDDING, PIXEL_HASH])


def run_global(stage, table, parts=2):
    """What the runner does: plan over all kept rows sorted by sample_id, then map partitions."""
    stage.plan(table.sort_by("sample_id").select(["sample_id", *stage.needs]))
    step = -(-table.num_rows // parts)
    outs = [stage.run(table.slice(i, step)) for i in range(0, table.num_rows, step)]
    return {r["source_key"]: r for r in pa.concat_tables(outs).to_pylist()}


def test_near_duplicates_across_partitions_keep_the_best_scored():
    rng = np.random.default_rng(0)
    base = [rng.normal(size=16) for _ in range(3)]
    table = rows([
        ("a", "h1", unit(base[0]), 5.0),
        ("b", "h2", unit(base[1]), 6.0),
        ("c", "h3", unit(base[2]), 5.5),
        ("a2", "h4", unit(base[0] + 0.01 * rng.normal(size=16)), 7.0),  # best copy of a
        ("b2", "h5", unit(base[1] + 0.01 * rng.normal(size=16)), 4.0),
        ("c_far", "h6", unit(base[2] + 2.0 * rng.normal(size=16)), 4.0),  # same theme, different picture
    ])
    out = run_global(DedupImages(DedupImagesConfig(block_rows=2), CTX), table, parts=3)
    assert {k for k, r in out.items() if r["status"] == "kept"} == {"a2", "b", "c", "c_far"}
    sid = {k: r["sample_id"] for k, r in out.items()}
    assert out["a"]["reason"] == "near_duplicate" and sid["a2"] in out["a"]["detail"]
    assert out["b2"]["reason"] == "near_duplicate" and sid["b"] in out["b2"]["detail"]
    # same result whatever the block size or partitioning
    again = run_global(DedupImages(DedupImagesConfig(block_rows=4096), CTX), table, parts=1)
    assert {k: (r["status"], r["detail"]) for k, r in again.items()} == {k: (r["status"], r["detail"]) for k, r in out.items()}


def test_exact_duplicates_from_real_scoring(tmp_path):
    config_dir, weights = make_tiny_clip(tmp_path, "tiny-clip-768", 768)
    png = image_bytes(7)
    # the same pixels re-encoded losslessly: different bytes, same decoded image
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, format="WEBP", lossless=True)
    assert buf.getvalue() != png
    table = make_rows([{"task": "generation", "source": "s", "source_key": k, "prompt": "a cat", "image": {"bytes": b, "path": None}}
                       for k, b in (("png", png), ("webp", buf.getvalue()), ("other", image_bytes(8)))])
    score = ScoreImages(ScoreConfig(clip_model="tiny-clip-768", clip_weights="other", clip_pretrained=str(weights), clip_config_dir=str(config_dir),
                                    min_side=32, min_aesthetic=0, min_clip_similarity=-1), CTX)
    scored = score.run(table)
    out = run_global(DedupImages(DedupImagesConfig(), CTX), scored, parts=3)
    statuses = {k: (r["status"], r["reason"]) for k, r in out.items()}
    assert statuses["other"] == ("kept", None)
    dup = "png" if statuses["png"][0] == "filtered" else "webp"
    assert statuses[dup] == ("filtered", "exact_duplicate")
    assert out[{"png": "webp", "webp": "png"}[dup]]["sample_id"] in out[dup]["detail"]


def test_rows_rejected_upstream_pass_through():
    table = rows([("a", "h", unit([1, 0]), 5.0), ("b", "h", unit([1, 0]), 5.0)])
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(["kept", "filtered"]))
    table = table.set_column(table.schema.get_field_index("reason"), "reason", pa.array([None, "low_aesthetic"]))
    stage = DedupImages(DedupImagesConfig(), CTX)
    kept_only = table.filter(pa.compute.equal(table.column("status"), "kept"))
    stage.plan(kept_only.select(["sample_id", *stage.needs]))
    out = {r["source_key"]: r for r in stage.run(table).to_pylist()}
    assert (out["a"]["status"], out["b"]["reason"]) == ("kept", "low_aesthetic")


def test_threshold_is_validated():
    with pytest.raises(ValueError):
        DedupImagesConfig(near_threshold=1.5)
