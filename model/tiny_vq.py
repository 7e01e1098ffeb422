"""Fit a tiny preset's VQ tokenizer on the small world, so decoded generations are recognisable.

The real Janus-Pro uses LlamaGen's pre-trained VQ; a random-init VQ decodes any id sequence to
noise, so nothing a tiny model generates could be checked. This fits transformers' own
`JanusVQVAE` (encoder, codebook, decoder) on shapes-world renders in CPU minutes:
reconstruction MSE plus the VQ-VAE codebook and commitment terms, straight-through gradients,
codebook initialised from encoder outputs and dead codes re-seeded. Codes live on the unit
sphere, as `JanusVQVAE.decode` expects (it L2-normalises codebook entries): the stored codebook is
normalised, so HF's nearest-code encode and its decode agree with what was fitted.
"""

from __future__ import annotations

import logging
import math
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stages.shapes_world import render, sample_scene

log = logging.getLogger("janus_forge.tiny_vq")


def render_batch(scenes, size: int) -> torch.Tensor:
    """Scenes rendered as [n, 3, size, size] in [-1, 1] (the processor's normalisation)."""
    arr = np.stack([np.asarray(render(scene, size), dtype=np.float32) for scene in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


def world_batch(rng: random.Random, n: int, size: int) -> torch.Tensor:
    """n random shapes-world renders (see render_batch)."""
    return render_batch([sample_scene(rng) for _ in range(n)], size)


def _encode(vq, pixels: torch.Tensor) -> torch.Tensor:
    """Unit-norm latents [B, h, w, d] (the codebook is on the unit sphere)."""
    z = vq.quant_conv(vq.encoder(pixels)).permute(0, 2, 3, 1)
    return F.normalize(z, dim=-1)


def _quantise(z: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = (z.reshape(-1, z.shape[-1]) @ codebook.t()).argmax(dim=-1)
    return ids, codebook[ids].view_as(z)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(a.clamp(-1, 1), b.clamp(-1, 1)).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def fit_vq(vq, size: int, steps: int = 400, batch: int = 32, lr: float = 2e-3, seed: int = 0, beta: float = 0.25,
           heldout: int = 128) -> dict:
    """Fit `vq` (a JanusVQVAE) in place on shapes-world renders; returns {steps, seconds, heldout_psnr, codes_used,
    colour_fidelity}. Runs on one thread: float sums in another order send a fit this short elsewhere (measured:
    the same seed gave 21.8 dB with blue decoded as azure on two threads, 25.9 dB and every colour right on one),
    so a preset is the same on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_vq(vq, size, steps, batch, lr, seed, beta, heldout)
    finally:
        torch.set_num_threads(threads)


def _fit_vq(vq, size: int, steps: int, batch: int, lr: float, seed: int, beta: float, heldout: int) -> dict:
    started = time.perf_counter()
    rng = random.Random(seed)
    test = world_batch(random.Random(seed + 1_000_003), heldout, size)  # a different stream: held out
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vq.train()
        emb = vq.quantize.embedding.weight
        optimizer = torch.optim.Adam(vq.parameters(), lr=lr, betas=(0.9, 0.99))
        usage = torch.zeros(emb.shape[0])
        warmup = steps // 4
        for step in range(1, steps + 1):
            x = world_batch(rng, batch, size)
            z = _encode(vq, x)
            if step <= warmup:  # a plain autoencoder first: latents learn to tell colours apart
                zq, codebook_loss = z, z.new_zeros(())
                if step == warmup:
                    with torch.no_grad():  # then the codebook starts as k-means of those latents
                        emb.copy_(_spherical_kmeans(_encode(vq, world_batch(rng, 64, size)).reshape(-1, emb.shape[1]), emb.shape[0]))
            else:
                codebook = F.normalize(emb, dim=-1)
                ids, zq = _quantise(z, codebook)
                codebook_loss = F.mse_loss(zq, z.detach()) + beta * F.mse_loss(z, zq.detach())
                zq = z + (zq - z).detach()  # straight-through
            recon = vq.decoder(vq.post_quant_conv(zq.permute(0, 3, 1, 2)))
            loss = F.mse_loss(recon, x) + codebook_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step > warmup:
                usage = 0.95 * usage + torch.bincount(ids, minlength=len(usage)).float()
                if step % 25 == 0 and step < steps * 0.8:
                    _reseed_dead(emb, usage, z.detach().reshape(-1, z.shape[-1]))
            if step % 100 == 0:
                log.info("vq fit step %d/%d: loss %.4f", step, steps, loss.item())
        with torch.no_grad():
            emb.copy_(F.normalize(emb, dim=-1))
        vq.eval()
    stats = evaluate_vq(vq, test)
    stats["colour_fidelity"] = colour_fidelity(vq, size, seed)
    stats.update(steps=steps, seconds=round(time.perf_counter() - started, 1))
    return stats


def _spherical_kmeans(points: torch.Tensor, k: int, iterations: int = 10) -> torch.Tensor:
    """k unit-norm centres of unit-norm points (cosine k-means, a few Lloyd steps)."""
    centres = points[torch.randperm(len(points))[:k]].clone()
    for _ in range(iterations):
        assign = (points @ centres.t()).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        filled = torch.bincount(assign, minlength=k) > 0
        centres[filled] = F.normalize(sums[filled], dim=-1)
    return centres


def _reseed_dead(emb: torch.nn.Parameter, usage: torch.Tensor, latents: torch.Tensor) -> None:
    """Codes nobody picked lately restart at random current latents (keeps the codebook in use)."""
    dead = (usage < 1e-3).nonzero().flatten()
    if len(dead):
        with torch.no_grad():
            emb[dead] = latents[torch.randint(len(latents), (len(dead),))]
        usage[dead] = 1.0


@torch.no_grad()
def colour_fidelity(vq, size: int, seed: int = 0, per_colour: int = 20) -> dict[str, float]:
    """Per palette colour, the share of one-object renders whose round trip the eval checker still
    reads as that colour: a colour the VQ cannot give back is one no generation can be scored right on."""
    from model.eval_checks import detect
    from stages.shapes_world import COLOURS, SHAPES, Scene, Thing

    rng = random.Random(seed + 3)
    out = {}
    for colour in COLOURS:
        scenes = [Scene([Thing(colour, SHAPES[i % len(SHAPES)], rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7),
                               rng.uniform(0.34, 0.44))], "colour") for i in range(per_colour)]
        pixels = render_batch(scenes, size)
        recon = vq.decode(vq.encode(pixels, return_dict=True).image_tokens.view(len(scenes), -1))
        arr = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        found = [detect(Image.fromarray(np.ascontiguousarray(a))) for a in arr]
        out[colour] = round(sum(bool(f) and f[0]["colour"] == colour for f in found) / len(found), 3)
    return out


@torch.no_grad()
def evaluate_vq(vq, pixels: torch.Tensor) -> dict:
    """Round trip through HF's own encode -> ids -> decode (what the trainer and generator use)."""
    out = vq.encode(pixels, return_dict=True)
    ids = out.image_tokens.view(pixels.shape[0], -1)
    recon = vq.decode(ids)
    return {"heldout_psnr": round(psnr(recon, pixels), 2), "codes_used": int(ids.unique().numel()),
            "codebook": int(vq.quantize.embedding.weight.shape[0]), "heldout_images": int(pixels.shape[0])}
