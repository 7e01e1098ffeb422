"""Tiny Janus: build, save, load through the real-checkpoint path, understand, generate, VQ round-trip."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json

import numpy as np
import pytest
import torch
from PIL import Image

from model.generate import decode_to_pil, encode_image_tokens, generate_image_tokens, generate_images
from model.tiny import PRESETS, ModelDirError, TinySpec, build_tiny_janus, load_janus


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_janus(tmp_path_factory.mktemp("tiny_janus"), "tiny", seed=0)
    model, processor = load_janus(path)
    return path, model, processor


def test_saved_dir_is_a_janus_checkpoint(tiny):
    path, model, processor = tiny
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "janus"
    spec = PRESETS["tiny"]
    assert model.config.text_config.hidden_size == spec.hidden_size
    assert model.config.vision_config.num_image_tokens == spec.grid**2 == processor.num_image_tokens
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image_placeholder>")
    assert model.config.text_config.vocab_size == len(tok)
    # survived the reload: generate(generation_mode="image") needs it
    assert model.generation_config.generation_kwargs["boi_token_id"] == tok.convert_tokens_to_ids("<begin_of_image>")
    # special tokens are single ids, not split by BPE
    for t in ("<|User|>", "<|Assistant|>", "<image_placeholder>", "<begin_of_image>", "<end_of_image>"):
        assert len(tok(t, add_special_tokens=False).input_ids) == 1, t


def test_same_seed_builds_same_weights(tiny, tmp_path):
    path, model, _ = tiny
    other, _ = load_janus(build_tiny_janus(tmp_path / "again", "tiny", seed=0))
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_understanding_loss_is_finite_and_trains(tiny):
    _, model, processor = tiny
    conv = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
    ]
    text = processor.apply_chat_template(conv)
    image = Image.new("RGB", (40, 24), (200, 30, 30))  # non-square: exercises resize + pad
    inputs = processor(text=[text, text], images=[image, image], return_tensors="pt")
    n_img = processor.num_image_tokens
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist() == [n_img, n_img]
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.image_token_id, -100)
    model.train()
    try:
        out = model(**inputs, labels=labels)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        grad = model.model.vision_model.embeddings.patch_embedding.weight.grad
        assert grad is not None and grad.abs().sum() > 0  # the image really reached the LLM
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_generate_images_is_deterministic_per_seed(tiny):
    _, model, processor = tiny
    prompts = ["a red cat", "a dog running under the rain at night"]
    a = generate_images(model, processor, prompts, seed=1, guidance_scale=5.0, temperature=1.0, n_per_prompt=2)
    b = generate_images(model, processor, prompts, seed=1, guidance_scale=5.0, temperature=1.0, n_per_prompt=2)
    c = generate_images(model, processor, prompts, seed=2, guidance_scale=5.0, temperature=1.0, n_per_prompt=2)
    assert len(a) == 4 and all(im.size == (32, 32) and im.mode == "RGB" for im in a)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, c))


def test_generated_ids_are_codebook_ids_and_guidance_matters(tiny):
    _, model, processor = tiny
    ids5 = generate_image_tokens(model, processor, ["a red cat"], seed=3, guidance_scale=5.0, temperature=0)
    ids1 = generate_image_tokens(model, processor, ["a red cat"], seed=3, guidance_scale=1.0, temperature=0)
    assert ids5.shape == (1, PRESETS["tiny"].grid ** 2)
    assert 0 <= int(ids5.min()) and int(ids5.max()) < model.config.vq_config.num_embeddings
    assert not torch.equal(ids5, ids1)


def test_encode_decode_shapes(tiny):
    _, model, processor = tiny
    images = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255), (20, 200, 20)]]
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    ids, grid = encode_image_tokens(model, pixel_values)
    g = PRESETS["tiny"].grid
    assert ids.dtype == torch.long and ids.shape == (3, g * g) and grid == (g, g)
    assert int(ids.max()) < model.config.vq_config.num_embeddings
    decoded = decode_to_pil(model, ids)
    assert [im.size for im in decoded] == [(32, 32)] * 3
    # batch-independent, up to batched float sums rounding a pixel level now and then
    alone = np.asarray(decode_to_pil(model, ids[:1])[0], dtype=int)
    diff = np.abs(alone - np.asarray(decoded[0], dtype=int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_missing_dir_error(tmp_path):
    with pytest.raises(ModelDirError, match=r"does not exist"):
        load_janus(tmp_path / "nope")


def test_wrong_architecture_error(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ModelDirError, match=r"model_type='llama'.*expected 'janus'") as err:
        load_janus(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_dir_without_config_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelDirError, match=r"no config.json.*weights.bin"):
        load_janus(tmp_path)


def test_spec_rejects_inconsistent_dims():
    with pytest.raises(ValueError, match="vq_base_channels"):
        TinySpec(vq_base_channels=48)
    with pytest.raises(ValueError, match="patch_size"):
        TinySpec(image_size=30, patch_size=8)


def test_generate_matches_transformers_cfg(tiny):
    """Our CFG path samples exactly what JanusForConditionalGeneration.generate does at s > 1."""
    _, model, processor = tiny
    ours = generate_image_tokens(model, processor, ["a red cat"], seed=7, guidance_scale=5.0, temperature=1.0)
    from model.generate import generation_prompt

    inputs = processor(text=[generation_prompt(processor, "a red cat")], generation_mode="image", return_tensors="pt")
    torch.manual_seed(7)
    theirs = model.generate(**inputs, generation_mode="image", guidance_scale=5.0, do_sample=True, temperature=1.0)
    assert torch.equal(ours, theirs)


def test_resolve_model_dir(tmp_path, tiny):
    from model.tiny import resolve_model_dir

    built = resolve_model_dir("tiny", tmp_path)  # built on first use, reused after
    assert (built / "config.json").is_file()
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_dir("tiny", tmp_path) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_model_dir(tiny[0], tmp_path) == tiny[0]  # plain paths pass through, checked
    with pytest.raises(ModelDirError, match=r"janus-pro-1b does not exist.*deepseek-community/Janus-Pro-1B"):
        resolve_model_dir("janus-pro-1b", tmp_path)
