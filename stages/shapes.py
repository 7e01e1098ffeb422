"""`shapes`: the small procedural world (stages/shapes_world.py) as a source of training rows.

One source, one kind of row (`mode`):
    class    class name -> image, one object (stage I's ImageNet role)         generation
    caption  caption -> image in GenEval's five prompt families              generation
    qa       image + question -> computed answer (colour, shape, count, position)  understanding
    text     a sentence about a scene                                         text
Row i of a mode is drawn from an RNG seeded by (recipe seed, mode, i), so it is the same in every
build. `split` picks the rows whose key hashes below `heldout_share` (heldout) or the others
(train): two sources with the same mode, count and seed and opposite splits partition one world,
and the held-out one feeds only the evaluator (janus-forge eval), never a mix.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Iterator, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from stages.base import Source, SourceConfig, register, row_tables
from stages.shapes_world import CATEGORIES, COLOURS, SHAPES, caption, class_scene, description, parse_prompt, questions, render, sample_scene

TASK_OF_MODE = {"class": "generation", "caption": "generation", "qa": "understanding", "text": "text"}


class ShapesConfig(SourceConfig):
    mode: Literal["class", "caption", "qa", "text"]
    count: int = Field(gt=0, description="scenes drawn (before the split)")
    split: Literal["train", "heldout"] = "train"
    heldout_share: float = Field(0.1, gt=0.0, lt=1.0)
    image_size: int = Field(32, ge=16)
    questions_per_image: int = Field(2, ge=1, le=4)
    categories: list[str] = list(CATEGORIES)
    prompt_template: str = "a {name}"  # class mode: like CLIP's "a photo of a {name}"
    rows_per_table: int = Field(256, gt=0)

    @field_validator("categories")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in CATEGORIES]
        if unknown or not value:
            raise ValueError(f"unknown categories {unknown}; known: {list(CATEGORIES)}")
        return value

    @property
    def task(self) -> str:
        return TASK_OF_MODE[self.mode]


def heldout(key: str, share: float) -> bool:
    """The split of a row: by the hash of its key (so of its sample_id's content), never by position."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64 < share


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@register
class Shapes(Source):
    name = "shapes"
    Config = ShapesConfig
    task = "generation"

    def files(self) -> list[Path]:
        # Procedural: the recipe directory stands in as the one input (as chart_tables' generator).
        return [self.context.recipe_dir]

    def read(self, path: Path) -> Iterator[pa.Table]:
        cfg = self.config
        keys = (f"{cfg.mode}-{i:06d}" for i in range(cfg.count))
        mine = (k for k in keys if heldout(k, cfg.heldout_share) == (cfg.split == "heldout"))
        rows = (row for key in mine for row in self._rows(key))
        yield from row_tables(rows, cfg.rows_per_table)

    def _rows(self, key: str) -> Iterator[dict]:
        cfg = self.config
        rng = random.Random(f"{self.context.seed}:{key}")
        base = {"source": self.context.source, "task": cfg.task}
        lineage = {"build_id": self.context.build_id, "parent_ids": [], "generator": "shapes_world", "seed": self.context.seed,
                   "params": json.dumps({"key": key, "mode": cfg.mode})}
        if cfg.mode == "class":
            i = int(key.rsplit("-", 1)[1])
            colour, shape = list(COLOURS)[i % len(COLOURS)], SHAPES[(i // len(COLOURS)) % len(SHAPES)]
            scene = class_scene(rng, colour, shape)
            name = f"{colour} {shape}"
            prompt = cfg.prompt_template.format(name=name)
            meta = {"class_name": name, "split": cfg.split, "spec": parse_prompt(prompt)}
            yield {**base, "source_key": key, "prompt": prompt, **self._image(scene), "meta": json.dumps(meta), "lineage": lineage}
            return
        scene = sample_scene(rng, rng.choice(cfg.categories))
        facts = {"category": scene.category, "split": cfg.split,
                 "things": [[t.colour, t.shape, round(t.cx, 3), round(t.cy, 3)] for t in scene.things]}
        if cfg.mode == "caption":
            text = caption(scene)
            meta = {**facts, "spec": parse_prompt(text)}
            yield {**base, "source_key": key, "prompt": text, **self._image(scene), "meta": json.dumps(meta), "lineage": lineage}
        elif cfg.mode == "text":
            yield {**base, "source_key": key, "text": description(scene), "meta": json.dumps(facts), "lineage": lineage}
        else:
            image = self._image(scene)
            for j, (kind, question, answer) in enumerate(questions(scene, rng, cfg.questions_per_image)):
                conversation = [{"role": "user", "content": f"<image_placeholder>\n{question}"},
                                {"role": "assistant", "content": answer}]
                meta = {**facts, "question_type": kind, "answer": answer}
                yield {**base, "source_key": f"{key}-{j}", "conversation": conversation, **image, "meta": json.dumps(meta),
                       "lineage": lineage}

    def _image(self, scene) -> dict:
        size = self.config.image_size
        return {"image": {"bytes": png(render(scene, size)), "path": None}, "width": size, "height": size}
