"""Pre-train a tiny preset's vision tower on the small world, the stand-in for SigLIP's pre-training.

Janus-Pro's understanding encoder is a pre-trained SigLIP: its features already tell shapes,
colours and layouts apart before stage I, and the paper keeps it frozen until stage III. A
random-init tiny ViT gives features the LLM has to untangle in the few hundred CPU steps of the
tiny stage III, and it does not (measured: held-out shape questions at chance, 0.27 vs 0.24).
So the tiny preset's vision tower learns what its captions say about shapes-world renders
(which colours and shapes are in the picture, how many, where), a caption-supervised stand-in
for SigLIP's image-text pre-training. Only the tower is kept: the probe head is thrown away, and
the Janus aligner still learns in stage I as in the paper. Renders come from their own seeded
stream, never from a build's rows, so no held-out row is seen.
"""

from __future__ import annotations

import logging
import random
import time

import torch
import torch.nn.functional as F

from model.tiny_vq import render_batch
from stages.shapes_world import COLOURS, POSITIONS, SHAPES, sample_scene

log = logging.getLogger("janus_forge.tiny_vision")
COLOUR_IDS = {c: i for i, c in enumerate(COLOURS)}
SHAPE_IDS = {s: i for i, s in enumerate(SHAPES)}
POSITION_IDS = {p: i for i, p in enumerate(POSITIONS)}


def scene_targets(scenes) -> dict[str, torch.Tensor]:
    """What the captions say: colours and shapes present (multi-hot), count, position (-100: none)."""
    colours = torch.zeros(len(scenes), len(COLOURS))
    shapes = torch.zeros(len(scenes), len(SHAPES))
    for i, scene in enumerate(scenes):
        for thing in scene.things:
            colours[i, COLOUR_IDS[thing.colour]] = 1
            shapes[i, SHAPE_IDS[thing.shape]] = 1
    count = torch.tensor([len(s.things) - 1 for s in scenes])
    position = torch.tensor([POSITION_IDS[s.position] if s.position else -100 for s in scenes])
    return {"colours": colours, "shapes": shapes, "count": count, "position": position}


class Probe(torch.nn.Module):
    """Reads the tower's mean token; its only job is to give the tower a caption signal."""

    def __init__(self, hidden: int):
        super().__init__()
        self.out = torch.nn.Linear(hidden, len(COLOURS) + len(SHAPES) + 3 + len(POSITIONS))

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.out(tokens.mean(dim=1))
        colours, shapes, count, position = logits.split([len(COLOURS), len(SHAPES), 3, len(POSITIONS)], dim=-1)
        return {"colours": colours, "shapes": shapes, "count": count, "position": position}


def _loss(out: dict, target: dict) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(out["colours"], target["colours"])
    loss = loss + F.binary_cross_entropy_with_logits(out["shapes"], target["shapes"])
    loss = loss + F.cross_entropy(out["count"], target["count"])
    if (target["position"] >= 0).any():
        loss = loss + F.cross_entropy(out["position"], target["position"], ignore_index=-100)
    return loss


def _batch(rng: random.Random, n: int, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """n renders in [-1, 1] (the processor's normalisation) and what their captions say."""
    scenes = [sample_scene(rng) for _ in range(n)]
    return render_batch(scenes, size), scene_targets(scenes)


def fit_vision(vision_model, size: int, steps: int = 300, batch: int = 64, lr: float = 2e-3, seed: int = 0,
               heldout: int = 256) -> dict:
    """Train `vision_model` (a JanusVisionModel) in place; returns {steps, seconds, heldout: accuracy per attribute}."""
    started = time.perf_counter()
    rng = random.Random(seed + 7)
    test_pixels, test_target = _batch(random.Random(seed + 2_000_003), heldout, size)  # its own stream: held out
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = Probe(vision_model.config.hidden_size)
        params = [*vision_model.parameters(), *probe.parameters()]
        optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
        vision_model.train()
        for step in range(1, steps + 1):
            pixels, target = _batch(rng, batch, size)
            loss = _loss(probe(vision_model(pixels).last_hidden_state), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if step % 100 == 0:
                log.info("vision fit step %d/%d: loss %.4f", step, steps, loss.item())
        vision_model.eval()
    with torch.no_grad():
        out = probe(vision_model(test_pixels).last_hidden_state)
    return {"steps": steps, "seconds": round(time.perf_counter() - started, 1), "heldout_images": heldout,
            "heldout_probe_accuracy": probe_accuracy(out, test_target)}


def probe_accuracy(out: dict, target: dict) -> dict[str, float]:
    """Exact-match accuracy per attribute (the set of colours, the set of shapes, the count, the position)."""
    colours = ((out["colours"] > 0).float() == target["colours"]).all(dim=1).float().mean()
    shapes = ((out["shapes"] > 0).float() == target["shapes"]).all(dim=1).float().mean()
    count = (out["count"].argmax(-1) == target["count"]).float().mean()
    has = target["position"] >= 0
    position = (out["position"].argmax(-1)[has] == target["position"][has]).float().mean()
    return {k: round(float(v), 3) for k, v in
            {"colours": colours, "shapes": shapes, "count": count, "position": position}.items()}
