"""The project's one image decoder (with the decompression-bomb limit) and cheap per-image checks.

Every place that turns image bytes into pixels (score_images, preprocess_images, imagefolder, the
trainer's data loader and VQ pre-tokenisation) calls `decode`, so a bomb is refused the same way,
as `decompression_bomb`, wherever it enters.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageStat

PIL_DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default: ~0.25 GiB of 24-bit pixels


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
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageRejected("decompression_bomb", str(err)[:300]) from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as err:
        reason = "truncated_image" if "truncated" in str(err) else "undecodable_image"
        raise ImageRejected(reason, f"{type(err).__name__}: {err}"[:300]) from None
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
