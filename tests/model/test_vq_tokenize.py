"""VQ pre-tokenisation stage: ids equal the trainer's on-the-fly encoding; corrupt images fail with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from model.data import Encoder, fill_image_ids
from model.generate import encode_image_tokens
from model.tiny import load_janus
from pipeline.schema import make_rows
from stages.base import StageContext, StageError
from stages.vq_tokenize import VQTokenize, VQTokenizeConfig
from tests.model.conftest import sample_rows


def stage(model_dir, tmp: Path) -> VQTokenize:
    ctx = StageContext(build_id="b", seed=0, recipe_dir=tmp, source="gen", task="generation", build_dir=tmp)
    return VQTokenize(VQTokenizeConfig(stage="vq_tokenize", model_dir=str(model_dir)), ctx)


def test_vq_stage_ids_match_on_the_fly_encoding(tiny_dir, tmp_path):
    rows = sample_rows(6, {"generation": 2, "understanding": 1})
    rows[1]["image"] = {"bytes": b"not an image", "path": "x.jpg"}
    out = stage(tiny_dir, tmp_path).run(make_rows(rows)).to_pylist()
    assert [r["status"] for r in out] == ["kept", "failed", "kept", "kept", "kept", "kept"]
    assert out[1]["reason"] == "bad_image" and "corrupt image" in out[1]["detail"]
    assert out[2]["image_tokens"] is None  # understanding rows pass through untouched
    gen = [r for r in out if r["task"] == "generation" and r["status"] == "kept"]
    assert all(len(r["image_tokens"]) == 64 and r["image_token_grid"] == [8, 8] for r in gen)
    # the trainer's fallback (no image_tokens column value) encodes to the same ids
    model, processor = load_janus(tiny_dir)
    enc = Encoder(processor, 256, 0.0, 0, processor.num_image_tokens)
    examples = [enc.encode({**r, "image_tokens": None}, i) for i, r in enumerate(gen)]
    fill_image_ids(examples, processor.image_processor, lambda px: encode_image_tokens(model, px)[0])
    assert [e.image_ids for e in examples] == [r["image_tokens"] for r in gen]


def test_vq_stage_tiny_preset_and_missing_model(tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        stage(tmp_path / "missing", tmp_path).preflight()
    s = stage("tiny", tmp_path)
    s.preflight()  # builds the tiny preset under <build>/models/tiny, deterministically
    assert (tmp_path / "models" / "tiny" / "config.json").is_file()


def test_vq_only_load_encodes_like_the_full_model(tiny_dir):
    import io

    from PIL import Image

    from model.data import generation_pixels
    from model.generate import load_vq, vq_fingerprint
    from tests.model.conftest import png

    model, processor = load_janus(tiny_dir)
    vq = load_vq(tiny_dir)
    assert type(vq).__name__ == "JanusVQVAE" and vq_fingerprint(vq) == vq_fingerprint(model)
    images = [Image.open(io.BytesIO(png(s))).convert("RGB") for s in (1, 2, 3)]
    px = generation_pixels(images, processor.image_processor)
    full, grid = encode_image_tokens(model, px)
    alone, grid_alone = encode_image_tokens(vq, px)
    assert full.tolist() == alone.tolist() and grid == grid_alone == (8, 8)
    # the VQ is a small part of the checkpoint: the LLM, heads and vision tower are never built
    assert sum(p.numel() for p in vq.parameters()) < sum(p.numel() for p in model.parameters())


def test_generator_ids_are_kept_and_counted(tiny_dir, tmp_path):
    from model.tiny import build_tiny_janus
    from stages.generate import GenerateConfig, GenerateImages

    ctx = StageContext(build_id="b", seed=3, recipe_dir=tmp_path, source="gen", task="generation")
    gen = GenerateImages(GenerateConfig(model_path=str(tiny_dir), images_per_prompt=2, image_format="webp"), ctx)
    prompts = make_rows([{"task": "generation", "source": "gen", "source_key": "p0", "prompt": "a red square"}])
    generated = gen.run(prompts)
    sampled = generated.column("image_tokens").to_pylist()
    same = stage(tiny_dir, tmp_path)
    out = same.run(generated).to_pylist()
    assert [r["image_tokens"] for r in out] == sampled and (same.skipped, same.encoded) == (2, 0)
    # re-encoding the lossy WebP would not give the sampled ids back: that is why they are kept
    encoded = stage(tiny_dir, tmp_path).run(make_rows([{**r, "image_tokens": None, "lineage": None} for r in out])).to_pylist()
    assert [r["image_tokens"] for r in encoded] != sampled
    # a trainer with another VQ (other weights): the generator's ids index the wrong codebook, re-encode
    other_dir = build_tiny_janus(tmp_path / "other", "tiny-random", seed=1)
    other = stage(other_dir, tmp_path)
    again = other.run(generated).to_pylist()
    assert (other.skipped, other.encoded) == (0, 2) and [r["image_tokens"] for r in again] != sampled
    assert all(json.loads(r["lineage"]["params"])["vq"] == other.fingerprint for r in again)
    # ... and its own ids are kept on a rerun (resume)
    rerun = stage(other_dir, tmp_path)
    assert [r["image_tokens"] for r in rerun.run(pa.Table.from_pylist(again, generated.schema)).to_pylist()] == \
        [r["image_tokens"] for r in again] and rerun.skipped == 2
