"""Tiny random-init open_clip models saved as a local weights file, for tests and the tiny recipe."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_clip_config(embed_dim: int = 768) -> dict:
    """A CLIP small enough for CPU tests; embed_dim 768 fits the LAION aesthetic head."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


def build_tiny_clip(out_dir: str | Path, name: str = "tiny-clip-768", embed_dim: int = 768, seed: int = 0) -> tuple[Path, Path]:
    """Write <out>/configs/<name>.json and <out>/<name>.pt; returns (config_dir, weights_file).

    A recipe then names `clip_model: <name>`, `clip_config_dir: <out>/configs` and
    `clip_pretrained: <out>/<name>.pt`: the same path real ViT-L-14 weights take.
    """
    import open_clip

    out = Path(out_dir)
    config_dir = out / "configs"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / f"{name}.json").write_text(json.dumps(tiny_clip_config(embed_dim)))
    open_clip.add_model_config(config_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
    weights = out / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    return config_dir, weights
