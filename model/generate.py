"""Image tokens in and out of a Janus model: VQ encode, VQ decode to PIL, CFG text-to-image sampling.

Two samplers: `generate_image_tokens` calls transformers' `generate(generation_mode="image")`
(eval and sample grids, one seed per call); `ImageTokenSampler` is the build's engine (one seed
per image, a reused static KV cache, optionally a compiled decode step).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import ClassifierFreeGuidanceLogitsProcessor, LogitsProcessorList, StaticCache


class AnyScaleCFG(ClassifierFreeGuidanceLogitsProcessor):
    """transformers' CFG (uncond + s * (cond - uncond)) without its s > 1 restriction.

    Janus's generate() only adds CFG for s > 1; at s <= 1 it would sample from the stacked
    cond/uncond rows and fail on shape, though s = 1 (cond only) and s = 0 (uncond only) are
    meaningful for evaluation sweeps.
    """

    def __init__(self, guidance_scale: float):
        self.guidance_scale = guidance_scale


def vq_of(model):
    """The JanusVQVAE of a full Janus model, or the VQ itself (as `load_vq` returns it)."""
    inner = getattr(model, "model", None)
    return inner.vqmodel if inner is not None and hasattr(inner, "vqmodel") else model


def vq_grid(model) -> tuple[int, int]:
    """The (h, w) grid of VQ ids per image, as the model's VQ decoder expects it."""
    h, w = vq_of(model).quantize.quant_state_dims
    return int(h), int(w)


VQ_PREFIX = "model.vqmodel."


def load_vq(model_dir: str | Path, dtype: torch.dtype | None = None):
    """Only the VQ of a Janus checkpoint: a JanusVQVAE from config.vq_config with the weights under
    `model.vqmodel.` (a few % of a Janus-Pro checkpoint; the LLM and vision tower are never read).

    dtype None keeps the stored dtype, as `load_janus` (from_pretrained's "auto") does, so the
    ids equal the full model's.
    """
    from safetensors import safe_open
    from transformers import JanusConfig, JanusVQVAE

    from model.tiny import check_model_dir

    path = check_model_dir(model_dir)
    index = path / "model.safetensors.index.json"
    if index.is_file():  # sharded: open only the shards that hold VQ weights
        files = sorted({f for k, f in json.loads(index.read_text())["weight_map"].items() if k.startswith(VQ_PREFIX)})
    else:
        files = ["model.safetensors"] if (path / "model.safetensors").is_file() else []
    state = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            state.update({k[len(VQ_PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith(VQ_PREFIX)})
    if not state:
        raise ValueError(f"model dir {path} has no {VQ_PREFIX}* weights in safetensors files (found {files or 'none'})")
    vq = JanusVQVAE(JanusConfig.from_pretrained(path, local_files_only=True).vq_config)
    vq.load_state_dict(state, strict=True)  # every VQ weight, nothing else: a partial VQ is an error
    stored = next(t.dtype for t in state.values() if t.is_floating_point())
    return vq.to(dtype or stored).eval()


def vq_fingerprint(model) -> str:
    """A content id of the VQ's weights (as float32, so a bf16 copy of the same weights matches):
    ids from two models index the same codebook, and decode the same, iff these agree."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vq_of(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


@torch.no_grad()
def encode_image_tokens(model, pixel_values: torch.Tensor) -> tuple[torch.LongTensor, tuple[int, int]]:
    """VQ-encode images normalised to [-1, 1] ([B, 3, H, W]) into ids [B, h*w] and their grid (h, w).

    `model` is a full Janus model or a bare JanusVQVAE (`load_vq`)."""
    vq = vq_of(model)
    pixel_values = pixel_values.to(device=vq.device, dtype=vq.dtype)
    out = vq.encode(pixel_values, return_dict=True)
    h, w = out.quantized_last_hidden_state.shape[-2:]
    # image_tokens comes back flat [B*h*w], row-major per image
    return out.image_tokens.view(pixel_values.shape[0], h * w).long(), (int(h), int(w))


@torch.no_grad()
def decode_to_pil(model, ids: torch.Tensor) -> list[Image.Image]:
    """Decode VQ ids [B, h*w] to RGB PIL images (one VQ decode call for the batch)."""
    vq = vq_of(model)
    pixels = vq.decode(ids.to(vq.device).long()).permute(0, 2, 3, 1)  # [B, H, W, 3] in the processor's [-1, 1] space
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


def draw(scores: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.LongTensor:
    """One id per row from softmax(scores / T) by inverse CDF with the row's uniform u in [0, 1)
    (T = 0: argmax). The first index whose CDF exceeds u * total is an exact draw and never a
    zero-probability id; one uniform per token, where Gumbel-max needs a vocabulary's worth."""
    if temperature <= 0:
        return scores.argmax(-1)
    cdf = torch.softmax(scores.float() / temperature, dim=-1).cumsum(-1)
    return torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).squeeze(-1).clamp_max(cdf.shape[-1] - 1)


def _bucket(n: int, step: int = 64) -> int:
    return -(-n // step) * step


class ImageTokenSampler:
    """Janus text-to-image sampling for a batch of (prompt, seed) pairs, built for throughput.

    - One seed per image, whatever the batching: a single CPU torch.Generator is re-seeded per
      image to draw that image's num_image_tokens uniforms up front, and each token is drawn by
      inverse CDF from one uniform (exact sampling from softmax(cfg_logits / T)). The decode loop
      then draws nothing, and the ids do not depend on the device's RNG or on the batch.
    - Cond and uncond rows share one forward per step (classifier-free guidance, any scale);
      positions come from the attention mask, so left padding does not shift a prompt.
    - A StaticCache per (rows, length bucket), reset and reused across calls: fixed shapes and
      addresses, which is what `torch.compile` of the decode step needs to compile once.
    """

    def __init__(self, model, processor, compile: bool = False, compile_mode: str | None = None):
        self.model, self.processor = model, processor
        gc = model.generation_config
        self.bos, self.pad, self.boi = gc.bos_token_id, gc.pad_token_id, (gc.generation_kwargs or {})["boi_token_id"]
        self.num_tokens = int(model.config.vision_config.num_image_tokens)
        self.caches: dict[tuple[int, int], StaticCache] = {}
        self.compiled = compile
        self.step = torch.compile(self._step, mode=compile_mode, dynamic=False) if compile else self._step
        self.decode_steps = 0  # forward passes run (prefill excluded): benchmarks divide time by it

    def _step(self, embeds, position_ids, attention_mask, cache):
        """One forward of the language model on `embeds`, then the image head on the last position."""
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                               position_ids=position_ids, past_key_values=cache, use_cache=True)
        return self.model.model.generation_head(out.last_hidden_state[:, -1, :])

    def cache(self, rows: int, length: int) -> StaticCache:
        key = (rows, length)
        if key not in self.caches:
            self.caches[key] = StaticCache(config=self.model.config.text_config, max_cache_len=length)
        else:
            self.caches[key].reset()
        return self.caches[key]

    @staticmethod
    def uniforms(seeds: list[int], n: int) -> torch.Tensor:
        """[len(seeds), n] uniforms in [0, 1): row i depends only on seeds[i]."""
        gen = torch.Generator("cpu")
        return torch.stack([torch.rand(n, generator=gen.manual_seed(s)) for s in seeds])

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], guidance_scale: float = 5.0, temperature: float = 1.0) -> torch.LongTensor:
        """VQ ids [len(prompts), num_image_tokens], row-major on the VQ grid."""
        model, device = self.model, self.model.device
        texts = [generation_prompt(self.processor, p) for p in prompts]
        inputs = self.processor(text=texts, generation_mode="image", padding=True, return_tensors="pt").to(device)
        b, n = len(prompts), self.num_tokens
        tokens = inputs["input_ids"].repeat(2, 1)
        # the unconditional half keeps only BOS and BOI (as transformers' Janus generate does)
        tokens[b:].masked_fill_((tokens[b:] != self.bos) & (tokens[b:] != self.boi), self.pad)
        prompt_mask = inputs["attention_mask"].repeat(2, 1)
        seq = tokens.shape[1]
        length = _bucket(seq + n)  # a few length buckets: few cache shapes, few compiles
        mask = torch.zeros(2 * b, length, dtype=prompt_mask.dtype, device=device)
        mask[:, :seq] = prompt_mask
        mask[:, seq : seq + n] = 1
        positions = (prompt_mask.cumsum(-1) - 1).clamp_min(0)
        cache = self.cache(2 * b, length)
        # prefill runs eagerly (its shape varies with the prompt length); the decode step is the hot loop
        logits = self._step(model.get_input_embeddings()(tokens), positions, mask, cache)
        u = self.uniforms(seeds, n).to(device)
        position = positions[:, -1:] + 1
        out = torch.empty(b, n, dtype=torch.long, device=device)
        for t in range(n):
            logits = logits.float()
            scores = logits[b:] + guidance_scale * (logits[:b] - logits[b:])
            nxt = draw(scores, u[:, t], temperature)
            out[:, t] = nxt
            if t == n - 1:
                break
            embeds = model.prepare_embeddings_for_image_generation(torch.cat([nxt, nxt])[:, None])
            logits = self.step(embeds, position + t, mask, cache)
            self.decode_steps += 1
        return out
