"""Precision: fp32 weights and AdamW state whatever the checkpoint's dtype; `precision` is the compute dtype."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from model.config import TrainRecipeError, load_train_recipe
from model.tiny import load_janus
from model.train import Trainer
from tests.model.test_train import recipe_file, weights

ROOT = Path(__file__).resolve().parents[2]
STAGE3_LR = 4.0e-5  # Table 2, stage III
PROBE = "model.language_model.layers.0.mlp.down_proj.weight"  # a trainable LLM matrix, init N(0, 0.02)


def save_bf16(src: Path, dst: Path) -> Path:
    """The tiny checkpoint converted to bf16, as the published Janus-Pro weights are."""
    model, processor = load_janus(src, dtype=torch.bfloat16)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    return dst


def test_bf16_checkpoint_trains_fp32_master_weights(tmp_path, tiny_dir, tiny_build):
    init = save_bf16(tiny_dir, tmp_path / "bf16")
    assert {t.dtype for t in weights(init).values()} == {torch.bfloat16}
    # Stage III as the real recipes run it: lr 4e-5, bf16 compute.
    recipe = load_train_recipe(recipe_file(tmp_path, 3, optim__lr=STAGE3_LR, schedule__steps=1, schedule__warmup_steps=0,
                                           precision="bf16"), data=tiny_build, init=init)
    trainer = Trainer(recipe, tmp_path / "run")
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    final = trainer.train()
    state = [trainer.optimizer.state[p] for p in trainer.params]
    assert {s[k].dtype for s in state for k in ("exp_avg", "exp_avg_sq")} == {torch.float32}

    # Checkpoints are written from the fp32 weights (documented in model/train.py and the README).
    for saved in (final, tmp_path / "run/checkpoints/step-00000001"):
        assert {t.dtype for t in weights(saved).values()} == {torch.float32}
        assert json.loads((saved / "config.json").read_text())["dtype"] == "float32"

    before, after = weights(init)[PROBE], weights(final)[PROBE]
    grad = trainer.model.get_parameter(PROBE).grad  # after clipping: what AdamW stepped with
    has_grad = grad.abs() > 1e-6
    # bf16 keeps 8 mantissa bits: above |w| = 2^-6 its spacing is >= 2^-13 = 1.2e-4, so a step of
    # 4e-5 (under half a spacing) rounds back to w. (Compared in fp32: a float scalar would be
    # rounded to bf16 first.)
    coarse = has_grad & (before.float().abs() > 2.0**-6)
    assert has_grad.float().mean() > 0.9 and coarse.float().mean() > 0.3

    # fp32 master weights: AdamW's first step is lr * g / (|g| + eps), about 4e-5 on every element.
    moved = (after - before.float()).abs()
    assert moved[has_grad].min() > 0.5 * STAGE3_LR
    assert moved.max() < 1.01 * STAGE3_LR

    # The same step in pure bf16 (bf16 weight, gradient and AdamW state) loses it on those elements.
    pure = torch.nn.Parameter(before.clone())
    pure.grad = grad.to(torch.bfloat16)
    torch.optim.AdamW([pure], lr=STAGE3_LR, betas=recipe.optim.betas, eps=recipe.optim.eps, weight_decay=0.0).step()
    assert torch.equal(pure.detach()[coarse], before[coarse])
    assert (after[coarse] != before[coarse].float()).all()


def first_step(tmp_path: Path, tiny_dir: Path, tiny_build: Path, precision: str) -> dict:
    out = tmp_path / precision
    out.mkdir()
    recipe = load_train_recipe(recipe_file(out, 2, schedule__steps=1, schedule__warmup_steps=0, precision=precision),
                               data=tiny_build, init=tiny_dir)
    Trainer(recipe, out / "run").train()
    return json.loads((out / "run/train.jsonl").read_text().splitlines()[0])


def test_bf16_autocast_first_step_loss_close_to_fp32(tmp_path, tiny_dir, tiny_build):
    fp32, bf16 = (first_step(tmp_path, tiny_dir, tiny_build, p) for p in ("fp32", "bf16"))
    assert fp32["loss"].keys() == bf16["loss"].keys() == {"understanding", "text", "generation"}
    for task, loss in fp32["loss"].items():
        assert math.isfinite(bf16["loss"][task]) and math.isfinite(bf16["grad_norm"])
        assert bf16["loss"][task] == pytest.approx(loss, rel=1e-2), task
    # Same data, same weights: only the compute dtype differs, and it did run in bf16.
    assert bf16["loss"] != fp32["loss"]


def test_precision_field_is_the_compute_dtype(tmp_path):
    for size in ("1b", "7b"):
        for stage in (1, 2, 3):
            assert load_train_recipe(ROOT / f"recipes/train/janus-pro-{size}/stage{stage}.yaml",
                                     data=tmp_path, init=tmp_path).precision == "bf16"
    raw = yaml.safe_load((ROOT / "recipes/train/tiny/stage1.yaml").read_text())
    assert raw["precision"] == "fp32"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**raw, "precision": "auto"}))
    with pytest.raises(TrainRecipeError, match=r"bad\.yaml: precision"):
        load_train_recipe(bad, data=tmp_path, init=tmp_path)
