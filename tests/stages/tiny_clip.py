"""Test inputs for image stages: a tiny open_clip model on disk, encoded images, a decompression bomb."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from model.tiny_clip import build_tiny_clip


def make_tiny_clip(directory: Path, name: str = "tiny-clip-768", embed_dim: int = 768, seed: int = 0) -> tuple[Path, Path]:
    """(config_dir, weights_file) of a tiny random-init open_clip model written under `directory`."""
    return build_tiny_clip(directory, name, embed_dim, seed)


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
