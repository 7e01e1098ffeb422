"""Text-to-image backends behind one small interface: (prompts, per-image seeds) -> PIL images."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from stages.base import StageError

BACKENDS: dict[str, type["Backend"]] = {}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def backend(cls):
    BACKENDS[cls.name] = cls
    return cls


def dir_revision(model_dir: Path) -> str:
    """A content id for a local model dir when the recipe names no revision: config + weight sizes."""
    digest = hashlib.sha256()
    for p in sorted(model_dir.rglob("*")):
        if p.is_file() and p.suffix in {".json", ".safetensors", ".bin"}:
            digest.update(f"{p.relative_to(model_dir)}:{p.stat().st_size}".encode())
            if p.suffix == ".json":
                digest.update(p.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


class Backend:
    """Loads one model from a local dir on one device; `generate` is deterministic per seed."""

    name: ClassVar[str]

    def __init__(self, model_dir: Path, device: str, dtype: str, sampling: dict[str, Any]):
        self.model_dir, self.device, self.dtype, self.sampling = model_dir, device, DTYPES[dtype], sampling

    @classmethod
    def resolve(cls, model_path: str, recipe_dir: Path, models_root: Path) -> Path:
        """The local dir a recipe's model_path names: a path, relative to the recipe."""
        p = Path(model_path).expanduser()
        return p if p.is_absolute() else recipe_dir / p

    @classmethod
    def check(cls, model_dir: Path) -> None:
        """Driver-side: the dir exists and holds this backend's kind of checkpoint."""
        if not model_dir.is_dir():
            raise StageError(f"model dir {model_dir} does not exist (weights are never downloaded at run time)")

    def load(self) -> None:
        raise NotImplementedError

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Backend-specific facts for lineage params (after load)."""
        return {}


class PerRowGumbelSampler(LogitsProcessor):
    """Samples each row from softmax(scores / T) with its own seeded generator (Gumbel-max).

    generate() samples with the global RNG, so an image would depend on which prompts shared
    its batch; with one generator per row it depends only on (prompt, seed). Used with
    do_sample=False: argmax(scores / T + Gumbel noise) is an exact draw from the softmax.
    """

    def __init__(self, seeds: list[int], temperature: float, device: str):
        self.temperature = temperature
        self.generators = [torch.Generator(device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.temperature <= 0:
            return scores  # greedy
        u = torch.stack([torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
        return scores.float() / self.temperature + gumbel


@backend
class JanusBackend(Backend):
    """transformers' JanusForConditionalGeneration in image mode, classifier-free guidance."""

    name = "janus"

    @classmethod
    def resolve(cls, model_path: str, recipe_dir: Path, models_root: Path) -> Path:
        """Also a model name: a tiny preset (built on first use) or a real one under models_root."""
        from model.tiny import ModelDirError, resolve_recipe_model

        try:
            return resolve_recipe_model(model_path, recipe_dir, models_root)
        except ModelDirError as err:
            raise StageError(str(err)) from None

    @classmethod
    def check(cls, model_dir: Path) -> None:
        from model.tiny import ModelDirError, check_model_dir

        try:
            check_model_dir(model_dir)
        except ModelDirError as err:
            raise StageError(str(err)) from None

    def load(self) -> None:
        from model.tiny import load_janus

        self.model, self.processor = load_janus(self.model_dir, dtype=self.dtype)
        self.model.to(self.device)

    def describe(self) -> dict[str, Any]:
        return {"image_tokens": int(self.model.config.vision_config.num_image_tokens)}

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        from model.generate import AnyScaleCFG, decode_to_pil, generation_prompt

        texts = [generation_prompt(self.processor, p) for p in prompts]
        inputs = self.processor(text=texts, generation_mode="image", padding=True, return_tensors="pt").to(self.device)
        sampler = PerRowGumbelSampler(seeds, self.sampling["temperature"], self.device)
        ids = self.model.generate(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            generation_mode="image",
            guidance_scale=1.0,  # ours does CFG (any scale), then the per-row sampler
            logits_processor=LogitsProcessorList([AnyScaleCFG(self.sampling["guidance_scale"]), sampler]),
            do_sample=False,
        )
        # Decode one image at a time: batched convolutions differ in the last bit with batch
        # size, and an image must not depend on which prompts shared its batch.
        return [decode_to_pil(self.model, row[None])[0] for row in ids]


@backend
class DiffusersBackend(Backend):
    """Any diffusers text-to-image pipeline (SDXL, SD3.5, FLUX ...) from a local dir."""

    name = "diffusers"

    @classmethod
    def check(cls, model_dir: Path) -> None:
        _diffusers()
        super().check(model_dir)
        if not (model_dir / "model_index.json").is_file():
            raise StageError(f"model dir {model_dir} has no model_index.json: not a diffusers pipeline")

    def load(self) -> None:
        self.pipe = _diffusers().DiffusionPipeline.from_pretrained(self.model_dir, torch_dtype=self.dtype, local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        self.pipe.to(self.device)

    def describe(self) -> dict[str, Any]:
        return {"pipeline": type(self.pipe).__name__}

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        # one generator per image: diffusers then draws each image's latents from its own seed
        generators = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        s = self.sampling
        size = {k: s[k] for k in ("width", "height") if s.get(k)}
        steps = {"num_inference_steps": s["steps"]} if s.get("steps") else {}
        return self.pipe(prompt=prompts, generator=generators, guidance_scale=s["guidance_scale"], output_type="pil", **size, **steps).images


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise StageError("backend 'diffusers' needs the diffusers package: pip install janus-forge[diffusers]") from None
    return diffusers
