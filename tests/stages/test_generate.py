"""generate_images: tiny random-init Janus saved and loaded from a local dir, seeded per image."""

import io
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from model.generate import ImageTokenSampler, decode_to_pil, draw, vq_fingerprint
from model.tiny import build_tiny_janus
from pipeline.schema import make_rows, sample_id
from stages.base import StageContext, StageError
from stages.generate import GenerateConfig, GenerateImages, image_seed
from stages.generate_backends import JanusBackend


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory):
    return build_tiny_janus(tmp_path_factory.mktemp("janus"), "tiny-random", seed=0)  # random weights: fast, same shapes


def make_stage(model_dir, seed=7, **overrides):
    cfg = {"model_path": str(model_dir), "images_per_prompt": 3, "batch_size": 8, **overrides}
    ctx = StageContext(build_id="build-1", seed=seed, recipe_dir=model_dir.parent, source="mj", task="generation")
    return GenerateImages(GenerateConfig(**cfg), ctx)


def prompt_rows(*prompts, **extra):
    return make_rows([{"task": "generation", "source": "mj", "source_key": f"p{i}", "prompt": p, "meta": {"n": i}, **extra}
                      for i, p in enumerate(prompts)])


def pixels(row):
    return np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"))


def test_fan_out_images_lineage_and_bad_prompts(janus_dir):
    stage = make_stage(janus_dir)
    rows = prompt_rows("a red fox in snow, watercolor", "a castle at dusk", "   ")
    upstream = make_rows([{"task": "generation", "source": "mj", "source_key": "dropped", "prompt": "x",
                           "status": "filtered", "reason": "too_short", "detail": "1 word"}])
    out = stage.run(pa.concat_tables([rows, upstream])).to_pylist()
    assert len(out) == 2 * 3 + 2  # every row accounted for: 6 images, the empty prompt, the upstream reject
    by_key = {r["source_key"]: r for r in out}
    assert (by_key["p2"]["status"], by_key["p2"]["reason"]) == ("filtered", "empty_prompt")
    assert (by_key["dropped"]["status"], by_key["dropped"]["reason"], by_key["dropped"]["image"]) == ("filtered", "too_short", None)
    parent = sample_id("mj", "p0")
    for i in range(3):
        r = by_key[f"p0#img{i}"]
        assert r["status"] == "kept" and r["sample_id"] == sample_id("mj", f"p0#img{i}")
        img = Image.open(io.BytesIO(r["image"]["bytes"]))
        assert img.format == "WEBP" and img.size == (32, 32) == (r["width"], r["height"])
        lin = r["lineage"]
        assert lin["build_id"] == "build-1" and lin["parent_ids"] == [parent] and lin["seed"] == image_seed(7, parent, i)
        assert lin["generator"].startswith(f"janus:{janus_dir}@sha256:")
        params = json.loads(lin["params"])
        assert params["image_index"] == i and params["guidance_scale"] == 5.0 and params["temperature"] == 1.0
        assert params["image_tokens"] == 64 and params["seconds"] > 0 and params["backend"] == "janus"
        assert r["prompt"] == "a red fox in snow, watercolor" and json.loads(r["meta"]) == {"n": 0}
    imgs = [pixels(by_key[f"p0#img{i}"]) for i in range(3)]
    assert not np.array_equal(imgs[0], imgs[1])  # different seeds, different images


def test_render_subject_gives_the_model_the_subject_clause_only(janus_dir):
    styled = make_stage(janus_dir, images_per_prompt=1, image_format="png", render="subject")
    plain = make_stage(janus_dir, images_per_prompt=1, image_format="png")
    [a, b] = styled.run(prompt_rows("a red square, oil painting, golden hour", "two blue circles:: neon glow")).to_pylist()
    [c, d] = plain.run(prompt_rows("a red square", "two blue circles")).to_pylist()
    # same keys, so same seeds: the styled rows are the subject's images, captioned with the whole prompt
    assert np.array_equal(pixels(a), pixels(c)) and np.array_equal(pixels(b), pixels(d))
    assert a["prompt"] == "a red square, oil painting, golden hour" and json.loads(a["lineage"]["params"])["render"] == "subject"
    [e] = plain.run(prompt_rows("a red square, oil painting, golden hour")).to_pylist()
    assert not np.array_equal(pixels(a), pixels(e))


def test_same_image_whatever_the_batching(janus_dir):
    prompts = ("a red fox in snow, watercolor", "a castle at dusk", "neon city street, rain")
    together = make_stage(janus_dir, batch_size=8, image_format="png").run(prompt_rows(*prompts)).to_pylist()
    alone = make_stage(janus_dir, batch_size=1, image_format="png").run(prompt_rows(*prompts).slice(2, 1)).to_pylist()
    want = {r["sample_id"]: r for r in together}
    assert len(alone) == 3
    for r in alone:
        # the ids (what training reads) are exactly the same; the pixels come from one batched VQ
        # decode per call, whose convolutions may round a pixel level differently with batch size
        assert r["image_tokens"] == want[r["sample_id"]]["image_tokens"]
        diff = np.abs(pixels(r).astype(int) - pixels(want[r["sample_id"]]).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    # another build seed gives other images
    other = make_stage(janus_dir, seed=8, image_format="png").run(prompt_rows(*prompts).slice(2, 1)).to_pylist()
    assert other[0]["image_tokens"] != want[other[0]["sample_id"]]["image_tokens"]


def test_stage_matches_the_bare_backend(janus_dir):
    out = make_stage(janus_dir, images_per_prompt=1, image_format="png").run(prompt_rows("a castle at dusk")).to_pylist()
    bare = JanusBackend(janus_dir, "cpu", "float32", {"guidance_scale": 5.0, "temperature": 1.0})
    bare.load()
    [img] = bare.generate(["a castle at dusk"], [out[0]["lineage"]["seed"]])
    np.testing.assert_array_equal(pixels(out[0]), np.asarray(img))


def test_resume_skips_finished_images(janus_dir):
    first = make_stage(janus_dir, images_per_prompt=2).run(prompt_rows("a castle at dusk"))
    again = make_stage(janus_dir, images_per_prompt=2)
    second = again.run(first)
    assert again.calls == 0 and second.to_pylist() == first.to_pylist()


def test_temperature_zero_is_greedy(janus_dir):
    out = make_stage(janus_dir, temperature=0.0, image_format="png").run(prompt_rows("a castle at dusk")).to_pylist()
    assert np.array_equal(pixels(out[0]), pixels(out[1])) and np.array_equal(pixels(out[1]), pixels(out[2]))


def test_start_up_errors_name_the_problem(janus_dir, tmp_path):
    with pytest.raises(StageError, match="does not exist"):
        make_stage(tmp_path / "nope").preflight()
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(StageError, match="expected 'janus'"):
        make_stage(tmp_path).preflight()
    with pytest.raises(ValidationError, match="unknown backend 'dalle'"):
        GenerateConfig(model_path="x", backend="dalle")
    with pytest.raises(ValidationError, match="width does not apply to the janus backend"):
        GenerateConfig(model_path="x", width=512)
    with pytest.raises(StageError, match="needs a GPU"):
        make_stage(janus_dir, dtype="bfloat16").preflight()


def test_diffusers_backend_without_the_package_says_how_to_install(janus_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what an install without the extra looks like
    with pytest.raises(StageError, match=r"pip install janus-forge\[diffusers\]"):
        make_stage(janus_dir, backend="diffusers").preflight()


def test_diffusers_backend_rejects_a_non_pipeline_dir(janus_dir):
    pytest.importorskip("diffusers")
    with pytest.raises(StageError, match="not a diffusers pipeline"):
        make_stage(janus_dir, backend="diffusers").preflight()


def test_diffusers_backend_from_a_local_pipeline(tmp_path):
    pytest.importorskip("diffusers")
    from tests.stages.tiny_diffusers import make_tiny_sd

    sd_dir = make_tiny_sd(tmp_path / "sd")
    stage = make_stage(sd_dir, backend="diffusers", images_per_prompt=2, steps=2, width=32, height=32, image_format="png")
    out = stage.run(prompt_rows("a castle at dusk")).to_pylist()
    assert [r["status"] for r in out] == ["kept", "kept"] and (out[0]["width"], out[0]["height"]) == (32, 32)
    params = json.loads(out[0]["lineage"]["params"])
    assert params["backend"] == "diffusers" and params["steps"] == 2 and params["pipeline"] == "StableDiffusionPipeline"
    assert not np.array_equal(pixels(out[0]), pixels(out[1]))
    # the same seed through the pipeline directly gives the same image (a batch of one rounds a
    # pixel level differently now and then, as batched float maths does: at most one level)
    [img] = stage.backend.generate(["a castle at dusk"], [out[1]["lineage"]["seed"]])
    diff = np.abs(pixels(out[1]).astype(int) - np.asarray(img).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_model_path_may_name_the_tiny_preset(tmp_path):
    # tiny-random: a preset like "tiny", without the minutes its VQ and vision fits take
    stage = make_stage(tmp_path / "recipe", model_path="tiny-random", models_root=str(tmp_path / "models"), images_per_prompt=1)
    out = stage.run(prompt_rows("a castle at dusk")).to_pylist()
    assert out[0]["status"] == "kept" and (tmp_path / "models" / "tiny-random" / "config.json").is_file()
    assert out[0]["lineage"]["generator"].startswith(f"janus:{tmp_path / 'models' / 'tiny-random'}@")
    with pytest.raises(StageError, match="hf download"):
        make_stage(tmp_path / "recipe", model_path="janus-pro-1b", models_root=str(tmp_path / "models")).preflight()


def test_rows_carry_the_ids_the_sampler_drew(janus_dir):
    stage = make_stage(janus_dir, images_per_prompt=2, image_format="png")
    out = stage.run(prompt_rows("a red fox in snow, watercolor", "a castle at dusk")).to_pylist()
    model, processor = stage.backend.model, stage.backend.processor
    # the engine alone, one image at a time, from the rows' seeds: the very ids each row stores
    sampler = ImageTokenSampler(model, processor)
    for r in out:
        [ids] = sampler.sample([r["prompt"]], [r["lineage"]["seed"]], guidance_scale=5.0, temperature=1.0).tolist()
        assert r["image_tokens"] == ids and r["image_token_grid"] == [8, 8]
        assert json.loads(r["lineage"]["params"])["vq"] == vq_fingerprint(model)
    # the stored images are decoded from those ids (PNG: lossless; the same 4-image decode call)
    decoded = decode_to_pil(model, torch.tensor([r["image_tokens"] for r in out]))
    for r, img in zip(out, decoded):
        np.testing.assert_array_equal(pixels(r), np.asarray(img))
    assert out[0]["image_tokens"] != out[1]["image_tokens"]
    # one model call and one VQ decode per batch: 4 images, batch 8
    assert stage.calls == 1


def test_engine_greedy_equals_transformers_generate(janus_dir):
    from model.generate import generate_image_tokens
    from model.tiny import load_janus

    model, processor = load_janus(janus_dir)
    ours = ImageTokenSampler(model, processor).sample(["a red cat"], [0], guidance_scale=5.0, temperature=0.0)
    theirs = generate_image_tokens(model, processor, ["a red cat"], seed=0, guidance_scale=5.0, temperature=0.0)
    assert ours.tolist() == theirs.tolist()  # same forward, same CFG, same cache semantics


def test_draw_samples_from_the_softmax():
    scores = torch.tensor([[2.0, 0.0, -1.0, float("-inf")]]).repeat(40000, 1)
    u = torch.rand(40000, generator=torch.Generator().manual_seed(0))
    ids = draw(scores, u, temperature=2.0)
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    want = torch.softmax(scores[0] / 2.0, -1)
    assert torch.allclose(freq, want, atol=0.01) and freq[3] == 0  # never a zero-probability id
    assert draw(scores[:2], u[:2], temperature=0.0).tolist() == [0, 0]


def test_compile_is_a_janus_option():
    with pytest.raises(ValidationError, match="compile applies to the janus backend only"):
        GenerateConfig(model_path="x", backend="diffusers", compile=True)


def test_compiled_engine_draws_the_same_ids(janus_dir):
    from model.tiny import load_janus

    model, processor = load_janus(janus_dir)
    prompts, seeds = ["a red fox in snow, watercolor", "a castle at dusk"], [1, 2]
    eager = ImageTokenSampler(model, processor).sample(prompts, seeds)
    compiled = ImageTokenSampler(model, processor, compile=True)
    assert compiled.sample(prompts, seeds).tolist() == eager.tolist()
    assert compiled.sample(prompts[1:], seeds[1:]).tolist() == eager[1:].tolist()  # another batch shape
