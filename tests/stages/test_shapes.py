"""The shapes world as a source: deterministic rows, a held-out split training never sees, computed answers."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from model.eval_checks import detect
from stages.base import StageContext
from stages.shapes import Shapes
from stages.shapes_world import CATEGORIES, COLOURS, SHAPES, parse_prompt, questions, sample_scene


def source(tmp_path, seed=0, **kw):
    cfg = Shapes.Config.model_validate({"kind": "shapes", **kw}, context={"recipe_dir": tmp_path})
    ctx = StageContext(build_id="b", seed=seed, recipe_dir=tmp_path, source="shapes", task=cfg.task, build_dir=tmp_path)
    return Shapes(cfg, ctx)


def rows(src) -> list[dict]:
    return pa.concat_tables([t for p in src.files() for t in src.read(p)]).to_pylist()


def image(row) -> Image.Image:
    return Image.open(io.BytesIO(row["image"]["bytes"]))


@pytest.mark.parametrize("mode", ["class", "caption", "qa", "text"])
def test_splits_partition_the_world_and_rows_are_deterministic(tmp_path, mode):
    train, held = rows(source(tmp_path, mode=mode, count=200)), rows(source(tmp_path, mode=mode, count=200, split="heldout"))
    scene_of = lambda r: r["source_key"].rsplit("-", 1)[0] if mode == "qa" else r["source_key"]  # noqa: E731
    train_keys, held_keys = {scene_of(r) for r in train}, {scene_of(r) for r in held}
    assert train_keys.isdisjoint(held_keys) and len(train_keys | held_keys) == 200
    assert 5 <= len(held_keys) <= 40  # ~10 % by hash of the key, not the first or last rows
    assert {json.loads(r["meta"])["split"] for r in held} == {"heldout"}
    again = rows(source(tmp_path, mode=mode, count=200))
    assert [(r["source_key"], r.get("prompt"), r.get("text")) for r in again] == [(r["source_key"], r.get("prompt"), r.get("text")) for r in train]
    if mode != "text":
        assert again[0]["image"]["bytes"] == train[0]["image"]["bytes"]
        other_seed = rows(source(tmp_path, seed=1, mode=mode, count=200))
        assert [r["image"]["bytes"] for r in other_seed[:5]] != [r["image"]["bytes"] for r in train[:5]]


def test_class_rows_cover_every_colour_and_shape_and_show_their_class(tmp_path):
    got = rows(source(tmp_path, mode="class", count=48, heldout_share=0.01))
    names = {json.loads(r["meta"])["class_name"] for r in got}
    assert names == {f"{c} {s}" for c in COLOURS for s in SHAPES}
    for r in got:
        found = detect(image(r))
        assert [(o["colour"], o["shape"]) for o in found] == [tuple(json.loads(r["meta"])["class_name"].split())]
        assert r["prompt"] == "a " + json.loads(r["meta"])["class_name"] and r["task"] == "generation"


def test_captions_cover_every_category_and_parse_back(tmp_path):
    got = rows(source(tmp_path, mode="caption", count=300))
    assert {json.loads(r["meta"])["category"] for r in got} == set(CATEGORIES)
    for r in got:
        assert parse_prompt(r["prompt"]) == json.loads(r["meta"])["spec"]


def test_answers_are_computed_from_the_scene(tmp_path):
    got = rows(source(tmp_path, mode="qa", count=200))
    kinds = {json.loads(r["meta"])["question_type"] for r in got}
    assert kinds == {"count", "colour", "shape", "position"}
    for r in got:
        meta = json.loads(r["meta"])
        objects = detect(image(r))
        answer = r["conversation"][1]["content"]
        assert answer == meta["answer"] and r["task"] == "understanding"
        assert r["conversation"][0]["content"].startswith("<image_placeholder>\n")
        if meta["question_type"] == "count":
            assert answer == str(len(objects))
        elif meta["question_type"] == "position":
            assert answer == objects[0]["position"]
        elif meta["question_type"] == "colour":
            assert answer in {o["colour"] for o in objects}
        else:
            assert answer in {o["shape"] for o in objects}


def test_questions_vary_their_phrasing():
    rng = random.Random(0)
    asked = {q for _ in range(300) for kind, q, _ in questions(sample_scene(rng, "colour"), rng, 2) if kind == "count"}
    assert len(asked) >= 3


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="categories"):
        source(tmp_path, mode="caption", count=10, categories=["colour", "size"])
    with pytest.raises(ValueError, match="mode"):
        source(tmp_path, mode="video", count=10)
