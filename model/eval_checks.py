"""Deterministic checkers for the evaluator: shapes-world images and relaxed answer accuracy.

The image checker plays the part of GenEval's object detector for the small world
(stages/shapes_world.py): objects are the connected components of pixels that differ from the
background; each gets a colour (nearest palette colour of its solid pixels), a shape (best
overlap with the renderer's own silhouettes), a centroid and a position word. It is tested on the
renderer's own images (tests/model/test_eval_checks.py), so a failing score is the model's.
"""

from __future__ import annotations

import functools
import re

import numpy as np
from PIL import Image
from scipy import ndimage

from stages.shapes_world import BACKGROUND, COLOURS, POSITIONS, SHAPES, Scene, Thing, render

MASK_DIFF = 60  # a pixel is object when some channel differs from the background by more
SOLID_DIFF = 110  # pixels this far from the background are solid (not anti-aliased edge)
MIN_AREA = 0.006  # components smaller than this share of the image are noise, not objects
FEATURE_SCALE = np.array([0.15, 0.3, 0.3, 0.3, 0.3])  # typical spread of each shape feature


def _moments(weights: np.ndarray) -> np.ndarray:
    """Scale-free shape features from coverage-weighted central moments (sub-pixel robust):
    x-y co-spread E[x²y²]/(E[x²]E[y²]) (square 1, disc 2/3, cross low), vertical skew (a triangle's
    mass sits low), kurtosis across and down (a cross is heavy-tailed), and the spread ratio."""
    ys, xs = np.nonzero(weights)
    w = weights[ys, xs] / weights[ys, xs].sum()
    x, y = xs - (w * xs).sum(), ys - (w * ys).sum()
    ex2, ey2 = (w * x**2).sum() + 1e-6, (w * y**2).sum() + 1e-6
    return np.array([(w * x**2 * y**2).sum() / (ex2 * ey2), (w * y**3).sum() / ey2**1.5,
                     (w * x**4).sum() / ex2**2, (w * y**4).sum() / ey2**2, np.log(ex2 / ey2)])


def _alpha(arr: np.ndarray, comp: np.ndarray) -> np.ndarray:
    """Per-pixel coverage: distance from the background relative to the component's solid pixels."""
    diff = np.abs(arr.astype(np.float32) - np.array(BACKGROUND, dtype=np.float32)).max(axis=-1)
    full = np.percentile(diff[comp], 90) if comp.any() else 1.0
    return np.clip(diff / max(full, 1.0), 0.0, 1.0)


@functools.lru_cache(maxsize=1)
def templates() -> dict[str, np.ndarray]:
    """Each shape's features as the renderer draws it (one large centred object)."""
    out = {}
    for shape in SHAPES:
        img = np.asarray(render(Scene([Thing("blue", shape, 0.5, 0.5, 0.8)], "colour"), 256))
        mask = _mask(img)
        out[shape] = _moments(np.where(mask, _alpha(img, mask), 0.0))
    return out


def _mask(arr: np.ndarray, diff: int = MASK_DIFF) -> np.ndarray:
    return np.abs(arr.astype(np.int16) - np.array(BACKGROUND, dtype=np.int16)).max(axis=-1) > diff


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]


def position_word(cx: float, cy: float) -> str:
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)


def detect(image: Image.Image) -> list[dict]:
    """Objects in a shapes-world image, largest first: colour, shape, centre (fractions), area share."""
    arr = np.asarray(image.convert("RGB"))
    h, w = arr.shape[:2]
    mask = _mask(arr)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    objects = []
    tmpl = templates()
    for i in range(1, n + 1):
        comp = labels == i
        area = comp.sum() / (h * w)
        if area < MIN_AREA:
            continue
        solid = comp & _mask(arr, SOLID_DIFF)
        pixels = arr[solid if solid.sum() >= 3 else comp].astype(np.float32)
        # the anti-aliased rim (below MASK_DIFF) counts by its coverage
        region = ndimage.binary_dilation(comp) & ~(mask & ~comp)
        feats = _moments(np.where(region, _alpha(arr, comp), 0.0))
        shape = min(SHAPES, key=lambda s: float((((feats - tmpl[s]) / FEATURE_SCALE) ** 2).sum()))
        ys, xs = np.nonzero(comp)
        cx, cy = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h
        objects.append({"colour": _nearest_colour(np.median(pixels, axis=0)), "shape": shape, "cx": round(float(cx), 3),
                        "cy": round(float(cy), 3), "position": position_word(cx, cy), "area": round(float(area), 4)})
    return sorted(objects, key=lambda o: -o["area"])


def check(spec: dict, objects: list[dict]) -> dict:
    """GenEval-style verdict for one image against a parsed prompt (stages.shapes_world.parse_prompt).

    `passed` follows the category's rule; `colour`/`shape`/`count`/`position` say whether that
    attribute is right (None when the prompt does not name it), judged on the largest object.
    """
    want = spec["objects"][0]
    top = objects[0] if objects else None
    attrs: dict[str, bool | None] = {"colour": None, "shape": None, "count": None, "position": None}
    if spec["category"] != "colour_shape":
        if want["colour"]:
            attrs["colour"] = top is not None and top["colour"] == want["colour"]
        attrs["shape"] = top is not None and top["shape"] == want["shape"]
        if spec["category"] == "count":
            attrs["count"] = len(objects) == spec["count"]
        if spec["position"]:
            attrs["position"] = top is not None and top["position"] == spec["position"]
    category = spec["category"]
    if category == "single_object":
        passed = len(objects) == 1 and bool(attrs["shape"])
    elif category == "colour":
        passed = len(objects) == 1 and bool(attrs["colour"])
    elif category == "count":
        passed = bool(attrs["count"])
    elif category == "position":
        passed = len(objects) == 1 and bool(attrs["position"])
    else:  # colour_shape: every named object found with its own colour, no extras
        found = [(o["colour"], o["shape"]) for o in objects]
        passed = len(objects) == len(spec["objects"]) and all((o["colour"], o["shape"]) in found for o in spec["objects"])
    return {"passed": passed, **attrs}


# -- understanding answers -------------------------------------------------------------------------
_NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?%?$")
_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "color": "colour"}


def normalise_answer(text: str) -> str:
    text = text.strip().strip(".").strip().lower()
    return _WORDS.get(text, text)


def _number(text: str) -> float | None:
    text = text.replace(",", "").rstrip("%")
    try:
        return float(text)
    except ValueError:
        return None


def relaxed_match(got: str, expected: str, tolerance: float = 0.05) -> bool:
    """ChartQA's relaxed accuracy: numbers within 5 % of the reference, else case-insensitive exact match."""
    got, expected = normalise_answer(got), normalise_answer(expected)
    want = _number(expected) if _NUMBER.match(expected) else None
    if want is not None:
        have = _number(got)
        if have is None:
            return False
        return have == want if want == 0 else abs(have - want) <= tolerance * abs(want)
    return got == expected
