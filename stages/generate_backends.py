"""Text-to-image backends behind one small interface: (prompts, per-image seeds) -> PIL images,
plus the VQ ids they were decoded from where the backend samples ids (janus)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

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


@dataclass
class Rendered:
    """A batch's images, and (janus) the VQ ids [B, h*w] they were decoded from with their grid."""

    images: list[Image.Image]
    image_tokens: torch.Tensor | None = None
    grid: tuple[int, int] | None = None


class Backend:
    """Loads one model from a local dir on one device; `render` is deterministic per seed."""

    name: ClassVar[str]

    def __init__(self, model_dir: Path, device: str, dtype: str, sampling: dict[str, Any], compile: bool = False):
        self.model_dir, self.device, self.dtype, self.sampling = model_dir, device, DTYPES[dtype], sampling
        self.compile = compile

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

    def render(self, prompts: list[str], seeds: list[int]) -> Rendered:
        return Rendered(self.generate(prompts, seeds))

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Backend-specific facts for lineage params (after load)."""
        return {}


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
        from model.generate import ImageTokenSampler, vq_fingerprint
        from model.tiny import load_janus

        self.model, self.processor = load_janus(self.model_dir, dtype=self.dtype)
        self.vq = vq_fingerprint(self.model)  # vq_tokenize keeps our ids only if its VQ has these weights
        self.model.to(self.device)
        self.sampler = ImageTokenSampler(self.model, self.processor, compile=self.compile)

    def describe(self) -> dict[str, Any]:
        return {"image_tokens": int(self.model.config.vision_config.num_image_tokens), "vq": self.vq,
                "compiled": self.compile}

    @torch.no_grad()
    def render(self, prompts: list[str], seeds: list[int]) -> Rendered:
        from model.generate import decode_to_pil, vq_grid

        s = self.sampling
        ids = self.sampler.sample(prompts, seeds, guidance_scale=s["guidance_scale"], temperature=s["temperature"])
        # one VQ decode for the batch: the ids are the data; the pixels are for scoring and viewing
        return Rendered(decode_to_pil(self.model, ids), ids.cpu(), vq_grid(self.model))

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return self.render(prompts, seeds).images


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
