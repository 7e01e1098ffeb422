"""score_images: real LAION head file, tiny real open_clip towers, bad images, start-up errors."""

import hashlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest
import torch
from pydantic import ValidationError

from pipeline.schema import make_rows
from stages.base import StageContext, StageError
from stages.clip_models import LAION_HEAD, load_aesthetic_head, load_clip, shared_dir
from stages.image_checks import decode
from stages.score import ScoreConfig, ScoreImages
from tests.stages.tiny_clip import huge_png_header, image_bytes, make_tiny_clip

HEAD = shared_dir() / LAION_HEAD
HEAD_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"


@pytest.fixture(scope="module")
def clip768(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("clip768"), "tiny-clip-768", 768)


def make_stage(tmp_path, clip, **overrides):
    config_dir, weights = clip
    cfg = dict(stage="score_images", clip_model="tiny-clip-768", clip_weights="other", clip_pretrained=str(weights),
               clip_config_dir=str(config_dir), min_side=32, min_aesthetic=0.0, min_clip_similarity=-1.0)
    cfg.update(overrides)
    ctx = StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="synthetic", task="generation")
    return ScoreImages(ScoreConfig(**cfg), ctx)


def gen_row(key, data, prompt="a watercolor fox in the snow"):
    return {"task": "generation", "source": "synthetic", "source_key": key, "prompt": prompt,
            "image": {"bytes": data, "path": None}}


def test_real_laion_head_file_loads_strictly_and_scores_on_the_ava_scale():
    assert hashlib.sha256(HEAD.read_bytes()).hexdigest() == HEAD_SHA256
    state = torch.load(HEAD, map_location="cpu", weights_only=True)
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    assert [tuple(state[f"layers.{i}.weight"].shape) for i in (0, 2, 4, 6, 7)] == [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    head = load_aesthetic_head(HEAD)
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, state[name])  # the published numbers, not a re-init
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(256, 768, generator=g)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        a, b = head(emb), load_aesthetic_head(HEAD)(emb)
    assert torch.equal(a, b)  # eval mode: dropout off, deterministic
    assert a.shape == (256,) and bool(((a > 1) & (a < 10)).all())
    # Pinned outputs of the published weights on fixed, RNG-free unit vectors.
    i = torch.arange(768, dtype=torch.float32)
    fixed = torch.stack([torch.ones(768), torch.cos(i), torch.sin(i * 0.5), (i % 7) - 3.0])
    with torch.no_grad():
        pinned = head(fixed / fixed.norm(dim=-1, keepdim=True))
    assert pinned.tolist() == pytest.approx([4.88328, 5.12568, 4.97726, 4.46767], abs=1e-4)


def test_scores_match_bare_open_clip_and_real_head(tmp_path, clip768):
    stage = make_stage(tmp_path, clip768)
    rows = [gen_row(f"k{i}", image_bytes(i)) for i in range(5)]
    rows.append({"task": "understanding", "source": "yfcc", "source_key": "u0", "image": {"bytes": image_bytes(9), "path": None},
                 "conversation": [{"role": "user", "content": "<image_placeholder>\nWhat is this?"},
                                  {"role": "assistant", "content": "A red barn under a grey sky."}]})
    rows.append({"task": "understanding", "source": "yfcc", "source_key": "u1", "image": {"bytes": image_bytes(10), "path": None}})
    out = stage.run(make_rows(rows)).to_pylist()
    assert [r["status"] for r in out] == ["kept"] * 7

    config_dir, weights = clip768
    model, preprocess, tokenizer = load_clip("tiny-clip-768", weights, config_dir, "cpu")
    head = load_aesthetic_head(HEAD)
    texts = [r["prompt"] for r in rows[:5]] + ["A red barn under a grey sky."]
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(decode(r["image"]["bytes"])) for r in rows]))
        img = img / img.norm(dim=-1, keepdim=True)
        txt = model.encode_text(tokenizer(texts))
        txt = txt / txt.norm(dim=-1, keepdim=True)
        want_a = head(img)
    for i, r in enumerate(out):
        assert r["scores"]["aesthetic"] == pytest.approx(float(want_a[i]), abs=1e-4)
        assert r["clip_embedding"] == pytest.approx(img[i].tolist(), abs=1e-5)
        assert (r["width"], r["height"]) == (64, 64) and len(r["pixel_hash"]) == 32
    for i in range(6):
        assert out[i]["scores"]["clip_similarity"] == pytest.approx(float(img[i] @ txt[i]), abs=1e-4)
    assert out[6]["scores"]["clip_similarity"] is None  # no text to compare with: not filtered on it


def test_thresholds_filter_with_scores_and_reasons(tmp_path, clip768):
    rows = make_rows([gen_row(f"k{i}", image_bytes(i)) for i in range(8)])
    scored = make_stage(tmp_path, clip768).run(rows).to_pylist()
    aesthetic = sorted(r["scores"]["aesthetic"] for r in scored)
    cut = (aesthetic[3] + aesthetic[4]) / 2
    out = make_stage(tmp_path, clip768, min_aesthetic=cut).run(rows).to_pylist()
    low = [r for r in out if r["status"] == "filtered"]
    assert len(low) == 4 and {r["reason"] for r in low} == {"low_aesthetic"}
    for r in low:
        detail = json.loads(r["detail"])
        assert r["scores"]["aesthetic"] < cut == detail["min_aesthetic"]
        assert detail["aesthetic"] == pytest.approx(r["scores"]["aesthetic"], abs=1e-3)
    sims = sorted(r["scores"]["clip_similarity"] for r in scored)
    out = make_stage(tmp_path, clip768, min_clip_similarity=(sims[1] + sims[2]) / 2).run(rows).to_pylist()
    assert [r["reason"] for r in out].count("low_clip_similarity") == 2


def test_bad_images_are_recorded_and_the_rest_goes_on(tmp_path, clip768):
    good = image_bytes(1)
    bad = {
        "zero": (b"", "failed", "empty_image"),
        "missing": (None, "failed", "empty_image"),
        "garbage": (b"not an image at all", "failed", "undecodable_image"),
        "truncated": (image_bytes(2, (128, 128))[:300], "failed", "truncated_image"),
        "bomb": (huge_png_header(20000, 20000), "failed", "decompression_bomb"),
        "small": (image_bytes(3, (16, 64)), "filtered", "too_small"),
        "wide": (image_bytes(4, (256, 40)), "filtered", "bad_aspect_ratio"),
        "flat": (image_bytes(5, flat=True), "filtered", "near_uniform"),
    }
    rows = [gen_row("good", good)] + [gen_row(k, v[0]) for k, v in bad.items()]
    rows.append({**gen_row("upstream", good), "status": "filtered", "reason": "empty_prompt", "detail": "x"})
    out = {r["source_key"]: r for r in make_stage(tmp_path, clip768).run(make_rows(rows)).to_pylist()}
    assert len(out) == len(rows)
    assert out["good"]["status"] == "kept" and out["good"]["scores"]["aesthetic"] is not None
    for key, (_, status, reason) in bad.items():
        assert (out[key]["status"], out[key]["reason"]) == (status, reason), (key, out[key]["detail"])
        assert out[key]["detail"]
    assert (out["upstream"]["status"], out["upstream"]["reason"], out["upstream"]["scores"]) == ("filtered", "empty_prompt", None)


def test_preflight_rejects_a_clip_that_does_not_fit_the_head(tmp_path):
    config_dir, weights = make_tiny_clip(tmp_path, "tiny-clip-512", 512)
    stage = make_stage(tmp_path, (config_dir, weights), clip_model="tiny-clip-512")
    with pytest.raises(StageError, match="512-d embeddings but the aesthetic head .* takes 768-d"):
        stage.preflight()


def test_preflight_names_missing_files(tmp_path, clip768):
    with pytest.raises(StageError, match="clip_pretrained: weights file not found"):
        make_stage(tmp_path, clip768, clip_pretrained="nope.pt").preflight()
    with pytest.raises(StageError, match="aesthetic head weights not found"):
        make_stage(tmp_path, clip768, aesthetic_head="missing-head.pth").preflight()
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(StageError, match="could not be read"):
        make_stage(tmp_path, clip768, aesthetic_head="junk.pth").preflight()
    with pytest.raises(ValidationError, match="min_aesthetc"):
        ScoreConfig(stage="score_images", clip_pretrained="x", min_aesthetc=5)
