"""download_images' image step: img2dataset only fetches; the project's one decoder decodes.

img2dataset's own resizer decodes with cv2 (IMREAD_UNCHANGED): it ignores EXIF orientation, fails
16-bit images at the JPEG encoder, and has no decompression-bomb limit. So the stage runs it with
`disable_all_reencoding` and turns the fetched bytes into the stored image here, with the same
decoder (and the same reasons: `decompression_bomb`, `truncated_image`, ...) as every other stage.
The resize modes mirror img2dataset's (`resize_only_if_bigger` included).
"""

from __future__ import annotations

import io

from PIL import Image

from stages.image_checks import ImageRejected, decode, decode_notes

FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
BORDER_FILL = (255, 255, 255)  # img2dataset's `border` padding colour


def _scaled(img: Image.Image, scale: float) -> Image.Image:
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    # img2dataset's interpolation: area averaging down (cv2 INTER_AREA == PIL BOX, ~5x cheaper
    # than Lanczos, which made the stage 0.68x bare img2dataset), Lanczos up
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS
    return img if size == img.size else img.resize(size, resample)


def resize(img: Image.Image, resolution: int, mode: str, only_if_bigger: bool) -> Image.Image:
    w, h = img.size
    if mode in ("keep_ratio", "center_crop"):
        if only_if_bigger and min(w, h) <= resolution:
            return img
        img = _scaled(img, resolution / min(w, h))
        if mode == "center_crop":
            left, top = (img.width - resolution) // 2, (img.height - resolution) // 2
            img = img.crop((left, top, left + resolution, top + resolution))
        return img
    if mode in ("keep_ratio_largest", "border"):
        if only_if_bigger and max(w, h) <= resolution:
            return img
        img = _scaled(img, resolution / max(w, h))
        if mode == "border":
            canvas = Image.new("RGB", (resolution, resolution), BORDER_FILL)
            canvas.paste(img, ((resolution - img.width) // 2, (resolution - img.height) // 2))
            img = canvas
        return img
    return img  # "no"


def stored_image(data: bytes, cfg) -> tuple[bytes, int, int, dict]:
    """(encoded bytes, width, height, decode notes) of a fetched image; ImageRejected if it is not one."""
    img = decode(data, cfg.max_image_pixels)
    if min(img.size) < cfg.min_image_size:
        raise ImageRejected("too_small", f"{img.width}x{img.height}, min_image_size {cfg.min_image_size}")
    out = resize(img, cfg.resolution, cfg.resize_mode, cfg.resize_only_if_bigger)
    buf = io.BytesIO()
    out.save(buf, FORMATS[cfg.encode_format], **({} if cfg.encode_format == "png" else {"quality": cfg.encode_quality}))
    return buf.getvalue(), out.width, out.height, decode_notes(img)
