"""The project's one image decoder (with the decompression-bomb limit) and cheap per-image checks.

Every place that turns image bytes into pixels (download_images, score_images, preprocess_images,
imagefolder, render_charts, the trainer's data loader, VQ pre-tokenisation, evaluation and the
report) calls `decode`, so a bomb is refused the same way,
as `decompression_bomb`, wherever it enters, and every image reaches RGB the same faithful way:

- EXIF orientation is applied (a phone photo stored sideways comes out upright);
- 16-bit greyscale (PNG/TIFF `I;16`, `I`) keeps its high byte (v >> 8), not PIL's clip at 255,
  which turns most 16-bit pictures white;
- transparency (RGBA, LA, palette or greyscale with a transparent colour) is composited on
  ALPHA_BACKGROUND, white, as img2dataset's downloader and browsers on a page do, instead of
  dropping alpha and showing whatever colour hides under transparent pixels (often black);
- animated GIF/WebP/PNG give their first frame; CMYK JPEG goes through PIL's CMYK -> RGB.
What was done is in the returned image's `info["decode_notes"]` (see `decode_notes`).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, ImageStat

PIL_DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default: ~0.25 GiB of 24-bit pixels
ALPHA_BACKGROUND = (255, 255, 255)
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageRejected(Exception):
    """Raised by decode(): `reason` is the snake_case verdict reason, the message the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def decode(data: bytes | None, max_pixels: int = PIL_DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decode image bytes to RGB; empty, truncated, undecodable or huge images raise ImageRejected."""
    if not data:
        raise ImageRejected("empty_image", "zero-byte or missing image")
    # PIL's bomb guard is a module global; set it per call so the recipe's limit is the one in force.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; anything above the limit is a rejection.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            notes = {"mode": img.mode}
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                notes["frames"] = frames  # the first is used
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected("decompression_bomb", str(err)[:300]) from None
    except Image.UnidentifiedImageError:
        # PIL's message names a BytesIO object; the first bytes say what was served (often HTML)
        raise ImageRejected("undecodable_image", f"not an image format PIL knows; starts with {data[:32]!r}") from None
    except (OSError, SyntaxError, ValueError) as err:
        reason = "truncated_image" if "truncated" in str(err) else "undecodable_image"
        raise ImageRejected(reason, f"{type(err).__name__}: {err}"[:300]) from None
    img = _upright(img, notes)
    rgb = _to_rgb(img, notes)
    rgb.info["decode_notes"] = notes
    return rgb


def decode_notes(img: Image.Image) -> dict:
    """What decode() did beyond reading RGB pixels, for a row's meta ({} when nothing): the stored
    mode when not RGB/L, frames (the first was used), EXIF orientation applied, 16-bit scaling,
    the background transparency was composited on."""
    notes = dict(img.info.get("decode_notes") or {})
    if notes.get("mode") in ("RGB", "L"):
        del notes["mode"]
    return notes


def _upright(img: Image.Image, notes: dict) -> Image.Image:
    try:
        orientation = img.getexif().get(0x0112, 1)
        if orientation in (None, 1):
            return img
        upright = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block (struct, value, key errors...) says nothing reliable
        return img  # keep the stored orientation: the pixels themselves decoded fine
    notes["exif_orientation"] = orientation
    return upright


def _to_rgb(img: Image.Image, notes: dict) -> Image.Image:
    if img.mode in _WIDE_GREY_MODES:
        grey = np.asarray(img)
        if grey.min() < 0 or grey.max() > 65535:
            raise ImageRejected("unsupported_image_mode", f"{img.mode} values {grey.min()}..{grey.max()} are not 16-bit")
        notes["scaled"] = "16-bit >> 8"
        return Image.fromarray((grey.astype(np.uint32) >> 8).astype(np.uint8), "L").convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        notes["alpha_background"] = list(ALPHA_BACKGROUND)
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def pixel_hash(img: Image.Image) -> str:
    """Hash of the decoded pixels (and size): re-encodes of the same picture collide on purpose."""
    digest = hashlib.blake2b(f"{img.width}x{img.height}".encode(), digest_size=16)
    digest.update(img.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageLimits:
    min_side: int
    max_aspect_ratio: float
    min_pixel_std: float


def check(img: Image.Image, limits: ImageLimits) -> tuple[str, str] | None:
    """(reason, detail) when the image fails a cheap check, else None."""
    w, h = img.size
    if min(w, h) < limits.min_side:
        return "too_small", f"{w}x{h}, min side {limits.min_side}"
    aspect = max(w, h) / min(w, h)
    if aspect > limits.max_aspect_ratio:
        return "bad_aspect_ratio", f"{w}x{h}, aspect {aspect:.2f} > {limits.max_aspect_ratio}"
    # Grey-level spread on a thumbnail: blank, single-colour and near-flat renders have ~0.
    thumb = img.convert("L")
    thumb.thumbnail((64, 64))
    std = ImageStat.Stat(thumb).stddev[0]
    if std < limits.min_pixel_std:
        return "near_uniform", f"grey std {std:.2f} < {limits.min_pixel_std}"
    return None
