"""Ray Train: two CPU workers (gloo; DDP or FSDP) reproduce the single-process run of the same recipe."""

from __future__ import annotations

import json

import pytest

from model.config import load_train_recipe
from model.train import Trainer
from tests.model.test_train import recipe_file

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_ray_workers_match_one_process(fsdp, tmp_path, tiny_dir, tiny_build):
    ray = pytest.importorskip("ray")
    from model.distributed import run_distributed

    recipe = load_train_recipe(recipe_file(tmp_path, 2, schedule__steps=3, batch__micro=2, fsdp=fsdp), data=tiny_build, init=tiny_dir)
    Trainer(recipe, tmp_path / "one").train()
    try:
        final = run_distributed(recipe, tmp_path / "two", resume=False, workers=2, use_gpu=False)
    finally:
        ray.shutdown()
    assert (final / "model.safetensors").is_file()
    one = [json.loads(l) for l in (tmp_path / "one" / "train.jsonl").read_text().splitlines()]
    two = [json.loads(l) for l in (tmp_path / "two" / "train.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert a["rows"] == b["rows"] and (a["workers"], b["workers"]) == (1, 2)
        assert a["model_flops"] == b["model_flops"]  # the global batch's FLOPs, however it is split
        for task in a["loss"]:
            assert b["loss"][task] == pytest.approx(a["loss"][task], rel=1e-4)
