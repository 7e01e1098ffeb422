"""The paper's image preprocessing: pad to square for understanding, centre-crop for generation."""

from __future__ import annotations

import io
import json
from typing import Literal

import pyarrow as pa
from PIL import Image
from pydantic import Field, PositiveInt

from pipeline.schema import IMAGE_TYPE, STATUS_FAILED, STATUS_KEPT, conform
from stages.base import Stage, StageConfig, register, with_verdicts
from stages.image_checks import PIL_DEFAULT_MAX_PIXELS, ImageRejected, decode, decode_notes

PAD_RGB = (127, 127, 127)


def pad_to_square(img: Image.Image, resolution: int, fill: tuple[int, int, int] = PAD_RGB) -> Image.Image:
    """Resize the long side to `resolution`, then pad the short side (centred) with `fill`."""
    img = img.convert("RGB")
    scale = resolution / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (resolution, resolution), fill)
    canvas.paste(img, ((resolution - w) // 2, (resolution - h) // 2))
    return canvas


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize the short side to `resolution`, then crop the long side around the centre."""
    img = img.convert("RGB")
    scale = resolution / min(img.size)
    w, h = max(resolution, round(img.width * scale)), max(resolution, round(img.height * scale))
    img = img.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - resolution) // 2, (h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


MODES = {"understanding": pad_to_square, "generation": resize_center_crop}


def encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG" if fmt == "jpg" else "PNG", **({"quality": quality} if fmt == "jpg" else {}))
    return buf.getvalue()


class PreprocessConfig(StageConfig):
    mode: Literal["understanding", "generation"]
    resolution: int = Field(384, gt=0)
    format: Literal["jpg", "png"] = "jpg"
    quality: int = Field(95, ge=1, le=100)
    max_image_pixels: PositiveInt = PIL_DEFAULT_MAX_PIXELS


@register
class PreprocessImages(Stage):
    """Square every kept image to `resolution`; undecodable images become failed rows.

    The re-encoded image loses what the original was (16-bit, CMYK, transparent, animated,
    EXIF-rotated): the decoder's notes on that go to `meta.image_decode`.
    """

    name = "preprocess_images"
    Config = PreprocessConfig
    needs = ("image",)
    adds = ("image", "width", "height", "meta")
    batch_size = 128
    version = 2  # 2: faithful decode (EXIF, 16-bit, alpha on white, first frame) + meta.image_decode

    def process(self, batch: pa.Table) -> pa.Table:
        fn, cfg = MODES[self.config.mode], self.config
        images = batch.column("image").to_pylist()
        metas = batch.column("meta").to_pylist()
        verdicts = list(zip(*(batch.column(c).to_pylist() for c in ("status", "reason", "detail"))))
        sizes = list(zip(batch.column("width").to_pylist(), batch.column("height").to_pylist()))
        for i, (image, verdict) in enumerate(zip(images, verdicts)):
            if verdict[0] != STATUS_KEPT:
                continue
            if not image or not image.get("bytes"):
                verdicts[i] = (STATUS_FAILED, "no_image", "image bytes missing")
                continue
            try:
                decoded = decode(image["bytes"], cfg.max_image_pixels)
                out = fn(decoded, cfg.resolution)
            except ImageRejected as err:
                # a bomb is named as such; other decode failures keep this stage's `corrupt_image`
                reason = err.reason if err.reason == "decompression_bomb" else "corrupt_image"
                verdicts[i] = (STATUS_FAILED, reason, f"{image.get('path')}: {err.reason}: {err}"[:500])
                continue
            path = image.get("path") or ""
            stem = path.rsplit(".", 1)[0] if "." in path else path
            images[i] = {"bytes": encode(out, cfg.format, cfg.quality), "path": f"{stem}.{cfg.format}"}
            sizes[i] = out.size
            if notes := decode_notes(decoded):
                metas[i] = json.dumps({**json.loads(metas[i] or "{}"), "image_decode": notes}, ensure_ascii=False)
        out = with_verdicts(batch, verdicts)
        out = out.set_column(out.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string()))
        out = out.set_column(out.schema.get_field_index("image"), "image", pa.array(images, IMAGE_TYPE))
        out = out.set_column(out.schema.get_field_index("width"), "width", pa.array([s[0] for s in sizes], pa.int32()))
        return conform(out.set_column(out.schema.get_field_index("height"), "height", pa.array([s[1] for s in sizes], pa.int32())))
