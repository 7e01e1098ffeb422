"""Image tokens in and out of a Janus model: VQ encode, VQ decode to PIL, CFG text-to-image sampling."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import ClassifierFreeGuidanceLogitsProcessor, LogitsProcessorList


class AnyScaleCFG(ClassifierFreeGuidanceLogitsProcessor):
    """transformers' CFG (uncond + s * (cond - uncond)) without its s > 1 restriction.

    Janus's generate() only adds CFG for s > 1; at s <= 1 it would sample from the stacked
    cond/uncond rows and fail on shape, though s = 1 (cond only) and s = 0 (uncond only) are
    meaningful for evaluation sweeps.
    """

    def __init__(self, guidance_scale: float):
        self.guidance_scale = guidance_scale


def vq_grid(model) -> tuple[int, int]:
    """The (h, w) grid of VQ ids per image, as the model's VQ decoder expects it."""
    h, w = model.model.vqmodel.quantize.quant_state_dims
    return int(h), int(w)


@torch.no_grad()
def encode_image_tokens(model, pixel_values: torch.Tensor) -> tuple[torch.LongTensor, tuple[int, int]]:
    """VQ-encode images normalised to [-1, 1] ([B, 3, H, W]) into ids [B, h*w] and their grid (h, w)."""
    vq = model.model.vqmodel
    pixel_values = pixel_values.to(device=vq.device, dtype=vq.dtype)
    out = vq.encode(pixel_values, return_dict=True)
    h, w = out.quantized_last_hidden_state.shape[-2:]
    # image_tokens comes back flat [B*h*w], row-major per image
    return out.image_tokens.view(pixel_values.shape[0], h * w).long(), (int(h), int(w))


@torch.no_grad()
def decode_to_pil(model, ids: torch.Tensor) -> list[Image.Image]:
    """Decode VQ ids [B, h*w] to RGB PIL images."""
    ids = ids.to(model.model.vqmodel.device).long()
    pixels = model.decode_image_tokens(ids)  # [B, H, W, 3] in the processor's [-1, 1] space
    # JanusImageProcessor.postprocess cannot take these (it re-runs preprocess, which rejects
    # float images outside [0, 1]), so undo the mean=std=0.5 normalisation here.
    arr = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def generation_prompt(processor, prompt: str) -> str:
    """The Janus-Pro text-to-image prompt: a user turn, then the assistant tag (BOI is added by the processor)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@torch.no_grad()
def generate_image_tokens(
    model,
    processor,
    prompts: list[str],
    seed: int,
    guidance_scale: float = 5.0,
    temperature: float = 1.0,
    n_per_prompt: int = 1,
) -> torch.LongTensor:
    """Sample VQ ids [len(prompts) * n_per_prompt, h*w] with classifier-free guidance; deterministic per seed."""
    texts = [generation_prompt(processor, p) for p in prompts]
    inputs = processor(text=texts, generation_mode="image", padding=True, return_tensors="pt").to(model.device)
    do_sample = temperature > 0
    # Sampling draws from the global torch RNG; fork it so a seed gives the same images
    # regardless of what ran before, and callers' RNG state is left untouched.
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            generation_mode="image",
            # scale 1 stops generate() adding its own CFG processor; ours does the same maths at any scale
            guidance_scale=1.0,
            logits_processor=LogitsProcessorList([AnyScaleCFG(guidance_scale)]),
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            num_return_sequences=n_per_prompt,
        )


def generate_images(
    model,
    processor,
    prompts: list[str],
    seed: int,
    guidance_scale: float = 5.0,
    temperature: float = 1.0,
    n_per_prompt: int = 1,
) -> list[Image.Image]:
    """Text-to-image with CFG: n_per_prompt PIL images per prompt, prompt-major order, deterministic per seed."""
    ids = generate_image_tokens(model, processor, prompts, seed, guidance_scale, temperature, n_per_prompt)
    return decode_to_pil(model, ids)
