"""score_images: CLIP weights and architecture that do not match stop the build at start-up."""

import json

import pytest
import torch
from torch import nn

from model.tiny_clip import tiny_clip_config
from pipeline.schema import make_rows
from stages.base import StageContext, StageError
from stages.clip_models import clip_config, load_clip
from stages.score import ScoreConfig, ScoreImages
from tests.stages.tiny_clip import image_bytes, make_tiny_clip


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """One weights file, and two configs that differ only in the activation (GELU / QuickGELU)."""
    config_dir, weights = make_tiny_clip(tmp_path_factory.mktemp("clip"), "tiny-gelu-768", 768)
    (config_dir / "tiny-gelu-768-quickgelu.json").write_text(json.dumps({**tiny_clip_config(768), "quick_gelu": True}))
    return config_dir, weights


def make_stage(tmp_path, **cfg):
    ctx = StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="s", task="generation")
    return ScoreImages(ScoreConfig(stage="score_images", min_side=32, min_aesthetic=0.0, min_clip_similarity=-1.0, **cfg), ctx)


def test_defaults_are_openai_weights_in_the_quickgelu_architecture(tmp_path):
    cfg = ScoreConfig(stage="score_images", clip_pretrained="ViT-L-14.pt")
    assert (cfg.clip_model, cfg.clip_weights) == ("ViT-L-14-quickgelu", "openai")
    arch = clip_config(cfg.clip_model, None)
    assert arch["quick_gelu"] is True and arch["embed_dim"] == 768  # what the LAION head takes
    with pytest.raises(StageError, match="clip_pretrained: weights file not found"):  # every config check passed
        make_stage(tmp_path, clip_pretrained="ViT-L-14.pt").preflight()


def test_openai_weights_in_the_gelu_vit_l_14_are_refused_naming_the_fix(tmp_path):
    with pytest.raises(StageError, match=r"score_images\.clip_model: 'ViT-L-14' uses GELU.*QuickGELU.*clip_model: ViT-L-14-quickgelu"):
        make_stage(tmp_path, clip_model="ViT-L-14", clip_pretrained="ViT-L-14.pt").preflight()


def test_the_trap_is_real_and_the_quickgelu_config_is_accepted(tmp_path, tiny_pair):
    config_dir, weights = tiny_pair
    pixels = torch.rand(2, 3, 32, 32)
    gelu, _, _ = load_clip("tiny-gelu-768", weights, config_dir, "cpu")
    quick, _, _ = load_clip("tiny-gelu-768-quickgelu", weights, config_dir, "cpu")
    with torch.no_grad():
        a, b = gelu.encode_image(pixels), quick.encode_image(pixels)
    assert not torch.allclose(a, b, atol=1e-4)  # same file, both load without a word, different embeddings

    common = dict(clip_pretrained=str(weights), clip_config_dir=str(config_dir), clip_weights="openai")
    with pytest.raises(StageError, match=r"clip_model: 'tiny-gelu-768' uses GELU.*clip_model: tiny-gelu-768-quickgelu"):
        make_stage(tmp_path, clip_model="tiny-gelu-768", **common).preflight()
    stage = make_stage(tmp_path, clip_model="tiny-gelu-768-quickgelu", **common)
    stage.preflight()
    rows = [{"task": "generation", "source": "s", "source_key": f"k{i}", "prompt": "a red square",
             "image": {"bytes": image_bytes(i), "path": None}} for i in range(2)]
    out = stage.run(make_rows(rows)).to_pylist()
    assert [r["status"] for r in out] == ["kept", "kept"]


def test_weights_of_another_shape_are_refused_before_loading(tmp_path, tiny_pair):
    config_dir, _ = tiny_pair
    _, weights512 = make_tiny_clip(tmp_path / "c512", "tiny-clip-512", 512)
    with pytest.raises(StageError, match=r"clip_pretrained: tiny-clip-512.pt has embedding size \(embed_dim\) 512 .* has 768"):
        make_stage(tmp_path, clip_model="tiny-gelu-768", clip_weights="other", clip_pretrained=str(weights512),
                   clip_config_dir=str(config_dir)).preflight()


def test_an_openai_torchscript_release_must_be_declared_openai(tmp_path, tiny_pair):
    config_dir, _ = tiny_pair
    archive = tmp_path / "ViT-L-14.pt"  # OpenAI's release format: a TorchScript archive
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), archive)
    with pytest.raises(StageError, match=r"score_images\.clip_weights: .* TorchScript archive.*set clip_weights: openai"):
        make_stage(tmp_path, clip_model="tiny-gelu-768-quickgelu", clip_weights="other", clip_pretrained=str(archive),
                   clip_config_dir=str(config_dir)).preflight()
