"""A small procedural world where learning is measurable: coloured shapes on a plain background.

Everything about a scene is known, so captions, questions and answers are computed, and a
generated image can be checked by a deterministic checker (model/eval_checks.py). Scenes are
drawn from a seeded RNG per key, so any row can be re-rendered from (seed, key) alone.

The caption grammar doubles as GenEval's prompt categories:
    single_object  "a circle"                      one object of that shape (any colour)
    colour         "a red circle"                  its colour
    count          "three red circles"             that many objects
    position       "a red circle on the left"      where it is
    colour_shape   "a red circle and a blue square"  both objects, each with its own colour
`parse_prompt` inverts the grammar (Midjourney parameters and style words around it are
ignored), so a prompt from any source in this world can be checked.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

# Saturated colours whose directions away from the white background are far apart: a small VQ
# normalises each feature channel per image (GroupNorm with one channel per group), which keeps
# the direction of a colour's difference from the background better than its size.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 0, 0),
    "yellow": (240, 220, 0),
    "green": (0, 160, 0),
    "cyan": (0, 200, 230),
    "blue": (0, 0, 230),
    "magenta": (220, 0, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUND = (255, 255, 255)
NUMBERS = {1: "one", 2: "two", 3: "three"}
# Where a single object with a position sits, as fractions of the image (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "center": (0.5, 0.5),
}
CATEGORIES = ("single_object", "colour", "count", "position", "colour_shape")
SUPERSAMPLE = 4  # draw large, then box-filter down: anti-aliased edges like a real render


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str
    cx: float  # centre, as a fraction of the image side
    cy: float
    size: float  # side of the bounding box, as a fraction of the image side


@dataclass
class Scene:
    things: list[Thing]
    category: str  # which caption family describes it (CATEGORIES)
    position: str | None = None  # for the position family

    def spec(self) -> dict:
        """What a checker verifies for the caption of this scene (see parse_prompt)."""
        return caption_spec(self)


@dataclass
class Spec:
    category: str
    objects: list[dict] = field(default_factory=list)  # [{colour, shape}], colour/shape may be None
    count: int = 1
    position: str | None = None


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _place(rng: random.Random, n: int, size: float) -> list[tuple[float, float]]:
    """n centres whose boxes never touch: one object anywhere it fits; several in distinct cells of a
    2 x 2 grid, jittered (random rejection sampling can fail to fit three objects)."""
    if n == 1:
        lo, hi = size / 2 + 0.03, 1 - size / 2 - 0.03
        return [(rng.uniform(lo, hi), rng.uniform(lo, hi))]
    if size > 0.38 or n > 4:
        raise ValueError(f"cannot place {n} objects of size {size} without overlap")
    cells = rng.sample([(x, y) for y in (0.27, 0.73) for x in (0.27, 0.73)], n)
    j = 0.03  # cell centres are 0.46 apart, so boxes up to 0.38 keep a gap after jitter
    return [(x + rng.uniform(-j, j), y + rng.uniform(-j, j)) for x, y in cells]


def sample_scene(rng: random.Random, category: str | None = None) -> Scene:
    """One scene of a caption family (random family when None)."""
    category = category or rng.choice(CATEGORIES)
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    if category in ("single_object", "colour"):
        size = rng.uniform(0.34, 0.44)
        (cx, cy), = _place(rng, 1, size)
        return Scene([Thing(colour, shape, cx, cy, size)], category)
    if category == "position":
        pos = rng.choice(list(POSITIONS))
        size = rng.uniform(0.30, 0.38)
        ax, ay = POSITIONS[pos]
        j = 0.04
        return Scene([Thing(colour, shape, ax + rng.uniform(-j, j), ay + rng.uniform(-j, j), size)], category, pos)
    if category == "count":
        n = rng.choice([2, 3])
        size = rng.uniform(0.26, 0.30)
        return Scene([Thing(colour, shape, cx, cy, size) for cx, cy in _place(rng, n, size)], category)
    if category == "colour_shape":
        other_colour = rng.choice([c for c in COLOURS if c != colour])
        other_shape = rng.choice([s for s in SHAPES if s != shape])
        size = rng.uniform(0.30, 0.36)
        (a, b) = _place(rng, 2, size)
        return Scene([Thing(colour, shape, *a, size), Thing(other_colour, other_shape, *b, size)], category)
    raise ValueError(f"unknown category {category!r}; known: {CATEGORIES}")


def class_scene(rng: random.Random, colour: str, shape: str) -> Scene:
    """Stage I's class-conditional image: one object of the class, anywhere, any size in range."""
    size = rng.uniform(0.34, 0.44)
    (cx, cy), = _place(rng, 1, size)
    return Scene([Thing(colour, shape, cx, cy, size)], "colour")


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":  # apex up, base at the bottom of the box
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "cross":  # a plus sign with arms a third of the box wide
        a = r / 3
        return [(cx - a, cy - r), (cx + a, cy - r), (cx + a, cy - a), (cx + r, cy - a), (cx + r, cy + a), (cx + a, cy + a),
                (cx + a, cy + r), (cx - a, cy + r), (cx - a, cy + a), (cx - r, cy + a), (cx - r, cy - a), (cx - a, cy - a)]
    return None


def render(scene: Scene, size: int) -> Image.Image:
    """The scene as an RGB image of `size` x `size` pixels."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for t in scene.things:
        cx, cy, r = t.cx * big, t.cy * big, t.size * big / 2
        fill = COLOURS[t.colour]
        poly = _polygon(t.shape, cx, cy, r)
        if poly:
            draw.polygon(poly, fill=fill)
        elif t.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.rectangle([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


# -- language ----------------------------------------------------------------------------------
def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """The scene's caption in its family's grammar (see module docstring)."""
    t = scene.things[0]
    if scene.category == "single_object":
        return f"a {t.shape}"
    if scene.category == "colour":
        return f"{_a(t.colour)} {t.colour} {t.shape}"
    if scene.category == "position":
        return f"a {t.colour} {t.shape} on the {scene.position}" if scene.position != "center" else f"a {t.colour} {t.shape} in the center"
    if scene.category == "count":
        return f"{NUMBERS[len(scene.things)]} {t.colour} {plural(t.shape)}"
    u = scene.things[1]
    return f"{_a(t.colour)} {t.colour} {t.shape} and {_a(u.colour)} {u.colour} {u.shape}"


def caption_spec(scene: Scene) -> dict:
    spec = parse_prompt(caption(scene))
    assert spec is not None
    return spec


_WORD = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(SHAPES)
_OBJ = rf"(?:(a|an|one|two|three)\s+)?(?:({_COLOUR})\s+)?({_SHAPE})(?:e?s)?"
_POS = r"(?:\s+(?:on the|at the|in the)\s+(left|right|top|bottom|center))?"
_GRAMMAR = re.compile(rf"^\s*{_OBJ}{_POS}(?:\s+and\s+{_OBJ})?\s*$", re.IGNORECASE)


def parse_prompt(text: str) -> dict | None:
    """A prompt of this world -> {category, objects[{colour, shape}], count, position}; None if not in the grammar.

    Style words after a comma and Midjourney parameters (`--ar 1:1`) are ignored, so cleaned and
    raw Midjourney-style prompts of this world parse to the same spec.
    """
    core = re.split(r"\s--|,", text.strip(), maxsplit=1)[0]
    m = _GRAMMAR.match(core)
    if not m:
        return None
    n1, c1, s1, pos, n2, c2, s2 = m.groups()
    count = _WORD.get((n1 or "a").lower(), 1)
    objects = [{"colour": c1 and c1.lower(), "shape": s1.lower()}]
    if s2:
        if count != 1 or pos:
            return None
        objects.append({"colour": c2 and c2.lower(), "shape": s2.lower()})
        return {"category": "colour_shape", "objects": objects, "count": 2, "position": None}
    if pos:
        return {"category": "position", "objects": objects, "count": 1, "position": pos.lower()}
    if count > 1:
        return {"category": "count", "objects": objects, "count": count, "position": None}
    return {"category": "colour" if c1 else "single_object", "objects": objects, "count": 1, "position": None}


# -- questions with computed answers -------------------------------------------------------------
def questions(scene: Scene, rng: random.Random, k: int = 1) -> list[tuple[str, str, str]]:
    """k distinct (question type, question, answer) about the scene, phrasings varied."""
    t = scene.things[0]
    same = all((u.colour, u.shape) == (t.colour, t.shape) for u in scene.things)
    pool: list[tuple[str, list[str], str]] = [
        ("count", ["How many objects are there?", "How many shapes are in the image?", "Count the objects."],
         str(len(scene.things))),
    ]
    if same:
        pool += [
            ("colour", ["What colour is the shape?", "What color are the objects?", "Which colour is used?"], t.colour),
            ("shape", ["What shape is shown?", "Which shape is in the picture?", "What kind of shape is it?"], t.shape),
        ]
    else:
        u = scene.things[1]
        pool += [
            ("colour", [f"What colour is the {t.shape}?", f"What color is the {t.shape}?"], t.colour),
            ("colour", [f"What colour is the {u.shape}?", f"What color is the {u.shape}?"], u.colour),
            ("shape", [f"What shape is {t.colour}?", f"Which shape is {t.colour}?"], t.shape),
        ]
    if scene.position:  # asked only where the object sits at an anchor: elsewhere "where" has no one answer
        pool.append(("position", ["Where is the shape?", "Where is the object in the image?"], scene.position))
    picked = rng.sample(pool, min(k, len(pool)))
    return [(kind, rng.choice(phrasings), answer) for kind, phrasings, answer in picked]


def description(scene: Scene) -> str:
    """A plain-text sentence about the scene (the pure-text share of this world)."""
    text = caption(scene)
    return f"The picture shows {text}. " + ("It is alone on a white background." if len(scene.things) == 1
                                            else f"There are {NUMBERS[len(scene.things)]} objects on a white background.")
