"""prompts -> generate_images -> score_images -> dedup_images, every row accounted for."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow.compute as pc

from model.tiny import build_tiny_janus
from model.tiny_clip import build_tiny_clip
from pipeline.schema import make_rows, to_shard
from stages.base import StageContext, kept
from stages.dedup_images import DedupImages, DedupImagesConfig
from stages.generate import GenerateConfig, GenerateImages
from stages.score import ScoreConfig, ScoreImages


def test_chain(tmp_path):
    build_tiny_janus(tmp_path / "janus", "tiny", seed=0)  # the stage loads it as model_path "janus"
    config_dir, weights = build_tiny_clip(tmp_path / "clip")
    ctx = StageContext(build_id="b1", seed=3, recipe_dir=tmp_path, source="mj", task="generation")
    prompts = make_rows([{"task": "generation", "source": "mj", "source_key": str(i), "prompt": p}
                         for i, p in enumerate(["a fox in snow", "", "a lighthouse at night, oil painting"])])
    gen = GenerateImages(GenerateConfig(model_path="janus", images_per_prompt=2, batch_size=4), ctx).run(prompts)
    assert gen.num_rows == 5 and pc.sum(pc.equal(gen.column("status"), "kept")).as_py() == 4
    score = ScoreImages(ScoreConfig(clip_model="tiny-clip-768", clip_weights="other", clip_pretrained="clip/tiny-clip-768.pt", clip_config_dir="clip/configs",
                                    min_side=32, min_aesthetic=0.0, min_clip_similarity=-1.0), ctx)
    score.preflight()
    scored = score.run(gen)
    dedup = DedupImages(DedupImagesConfig(), ctx)
    dedup.plan(kept(scored).sort_by("sample_id").select(["sample_id", *dedup.needs]))
    final = dedup.run(scored)
    assert final.num_rows == 5
    rows = final.to_pylist()
    assert [r["reason"] for r in rows if r["prompt"] == ""] == ["empty_prompt"]
    for r in rows:
        if r["prompt"]:
            assert r["scores"]["aesthetic"] is not None and json.loads(r["lineage"]["params"])["backend"] == "janus"
            assert r["status"] == "kept" or r["reason"] in ("near_duplicate", "exact_duplicate")
    shard = to_shard(kept(final))  # the work-only embedding and hash never reach a shard
    assert "clip_embedding" not in shard.column_names and shard.num_rows >= 1
