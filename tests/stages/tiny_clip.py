"""A tiny random-init open_clip model saved to a local weights file, loaded back the real way."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def make_tiny_clip(directory: Path, name: str = "tiny-clip-768", embed_dim: int = 768, seed: int = 0) -> tuple[Path, Path]:
    """Write <dir>/configs/<name>.json and <dir>/<name>.pt; returns (config_dir, weights_file)."""
    import open_clip
    import torch

    config_dir = directory / "configs"
    config_dir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (config_dir / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(config_dir)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    weights = directory / f"{name}.pt"
    torch.save(model.state_dict(), weights)
    return config_dir, weights


def image_bytes(seed: int, size: tuple[int, int] = (64, 64), fmt: str = "PNG", flat: bool = False) -> bytes:
    """A random-noise (or flat) RGB image encoded as bytes."""
    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0], 3), 128, np.uint8) if flat else rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb) without the pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
