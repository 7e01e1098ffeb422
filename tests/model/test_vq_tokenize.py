"""VQ pre-tokenisation stage: ids equal the trainer's on-the-fly encoding; corrupt images fail with a reason."""

from __future__ import annotations

from pathlib import Path

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
