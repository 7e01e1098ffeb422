"""The tiny preset's fitted parts: the VQ reconstructs the shapes world, the vision tower reads it."""

from __future__ import annotations

import json
import random

import pytest

import torch
from transformers import JanusForConditionalGeneration

from model.tiny import PRESETS, build_tiny_janus, janus_config
from model.tiny_vision import fit_vision
from model.tiny_vq import evaluate_vq, fit_vq, world_batch
from model.tokenizer import train_tokenizer
from stages.shapes_world import COLOURS


def fresh_janus(seed: int = 0) -> JanusForConditionalGeneration:
    torch.manual_seed(seed)
    return JanusForConditionalGeneration(janus_config(PRESETS["tiny"], train_tokenizer(PRESETS["tiny"].vocab_size)))


def test_vq_fit_reconstructs_held_out_renders():
    vq = fresh_janus().model.vqmodel
    held_out = world_batch(random.Random(99), 64, 32)
    before = evaluate_vq(vq, held_out)["heldout_psnr"]
    stats = fit_vq(vq, 32, steps=150, seed=0)
    after = evaluate_vq(vq, held_out)
    # a random VQ decodes to noise (~5 dB); fitted, the shapes come back (the preset's 600 steps: ~23 dB)
    assert after["heldout_psnr"] > max(before + 8, 14) and after["codes_used"] > 16, (before, after)
    assert stats["steps"] == 150 and stats["heldout_psnr"] > 14  # its own held-out stream agrees
    assert set(stats["colour_fidelity"]) == set(COLOURS)


@pytest.mark.slow
def test_the_tiny_presets_vq_gives_every_colour_back(tmp_path):
    """A colour the VQ cannot reconstruct caps every generation score (blue decoded as azure once did)."""
    stats = json.loads((build_tiny_janus(tmp_path / "tiny", "tiny") / "vq_fit.json").read_text())
    assert min(stats["colour_fidelity"].values()) >= 0.95 and stats["heldout_psnr"] > 22, stats


def test_vision_fit_makes_colours_counts_and_positions_readable():
    tower = fresh_janus().model.vision_model
    stats = fit_vision(tower, 32, steps=250, seed=0)
    acc = stats["heldout_probe_accuracy"]
    # exact sets of colours (6 choose up to 2) and counts whose majority class ("one") is 0.6
    assert acc["colours"] >= 0.9 and acc["count"] >= 0.8 and acc["position"] >= 0.9, acc
