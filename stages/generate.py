"""Render prompts to images (Janus or diffusers backends), k seeded images per prompt, with lineage."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa
import torch
from pydantic import Field, PositiveInt, field_validator, model_validator

from pipeline.schema import IMAGE_TYPE, LINEAGE_TYPE, STATUS_FILTERED, STATUS_KEPT, conform, sample_id
from stages.base import Resources, Stage, StageConfig, StageError, models_root, register, with_verdicts
from stages.generate_backends import BACKENDS, dir_revision

FORMATS = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG"}


class GenerateConfig(StageConfig):
    stage: Literal["generate_images"] = "generate_images"
    backend: str = Field("janus", description="one of stages.generate_backends.BACKENDS")
    model_path: str = Field(description="local model dir (relative to the recipe), or a model name (janus: tiny, janus-pro-1b ...)")
    models_root: str | None = Field(None, description="where named models live (relative to the recipe); default <build>/models")
    revision: str | None = Field(None, description="recorded in lineage; default: a content id of the dir")
    images_per_prompt: PositiveInt = 4
    render: Literal["prompt", "subject"] = Field(
        "prompt", description="what the model is given: the whole prompt, or its subject clause (the text before the "
        "first ',' or '::', as Midjourney prompts lead with it) for a teacher that knows no style words; the row keeps "
        "the whole prompt as its caption either way")
    # Janus-Pro inference defaults (deepseek-ai/Janus): CFG 5, temperature 1, 576 tokens at 384 px
    guidance_scale: float = Field(5.0, ge=0.0)
    temperature: float = Field(1.0, ge=0.0, description="janus: sampling temperature (0 = greedy)")
    steps: PositiveInt | None = Field(None, description="diffusers: denoising steps (pipeline default if unset)")
    width: PositiveInt | None = Field(None, description="diffusers only; Janus's size is fixed by the model")
    height: PositiveInt | None = None
    image_format: Literal["webp", "jpeg", "png"] = "webp"
    quality: int = Field(90, ge=1, le=100, description="webp/jpeg quality")
    batch_size: PositiveInt = Field(8, description="images per model call")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gpus: float = Field(0.0, ge=0.0, description="GPUs per actor (0 on a CPU machine)")
    actors: PositiveInt = 1
    compile: bool | None = Field(None, description="janus: torch.compile the decode step (static KV cache); default: on when the actor has a GPU")

    @field_validator("backend")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; known: {sorted(BACKENDS)}")
        return value

    @model_validator(mode="after")
    def _janus_size(self) -> "GenerateConfig":
        # Janus renders at its VQ grid (384 px for Janus-Pro): a size here would be silently ignored
        if self.backend == "janus":
            for name in ("width", "height", "steps"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} does not apply to the janus backend (its size and token count come from the model)")
        elif self.compile:
            raise ValueError(f"compile applies to the janus backend only, not {self.backend!r}")
        return self


def image_seed(build_seed: int, parent_id: str, index: int) -> int:
    """Seed of one image: depends only on (build seed, prompt's sample_id, image index)."""
    digest = hashlib.sha256(f"{build_seed}\x00{parent_id}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


@register
class GenerateImages(Stage):
    name = "generate_images"
    Config = GenerateConfig
    needs = ("prompt",)
    adds = ("image", "width", "height", "image_tokens", "image_token_grid", "lineage")

    def __init__(self, config: GenerateConfig, context):
        super().__init__(config, context)
        self.batch_size = config.batch_size
        self.backend_cls = BACKENDS[config.backend]
        self.model_dir: Path | None = None  # resolved in preflight (a tiny preset may be built there)
        self.calls = 0  # model calls made by this worker (resume tests and benchmarks read it)

    def resources(self) -> Resources:
        return Resources(cpus=1.0, gpus=self.config.gpus, actors=self.config.actors)

    def sampling(self) -> dict:
        c = self.config
        return {"guidance_scale": c.guidance_scale, "temperature": c.temperature, "steps": c.steps, "width": c.width, "height": c.height}

    def preflight(self) -> None:
        base = self.context.recipe_dir
        self.model_dir = self.backend_cls.resolve(self.config.model_path, base, models_root(self.context, self.config.models_root))
        self.backend_cls.check(self.model_dir)
        if self.config.dtype != "float32" and self.config.gpus == 0:
            raise StageError(f"generate_images.dtype: {self.config.dtype} needs a GPU (gpus > 0); use float32 on CPU")

    def setup(self) -> None:
        self.preflight()
        device = "cuda" if self.config.gpus > 0 and torch.cuda.is_available() else "cpu"
        # compiling pays off on a GPU (per-step launch overhead); on CPU it only adds start-up time
        compile = self.config.compile if self.config.compile is not None else device == "cuda"
        self.backend = self.backend_cls(self.model_dir, device, self.config.dtype, self.sampling(), compile=compile)
        self.backend.load()
        self.revision = self.config.revision or dir_revision(self.model_dir)

    def fan_out(self, batch: pa.Table) -> pa.Table:
        """Each kept prompt row becomes images_per_prompt rows; others stay one row each."""
        out = []
        for row in batch.to_pylist():
            if row["status"] != STATUS_KEPT or not (row.get("prompt") or "").strip() or row.get("image"):
                out.append(row)  # rejected upstream, empty prompt, or an already generated image
                continue
            parent = row["sample_id"]
            for i in range(self.config.images_per_prompt):
                key = f"{row['source_key']}#img{i}"
                seed = image_seed(self.context.seed, parent, i)
                lineage = {"build_id": self.context.build_id, "parent_ids": [parent], "generator": None, "seed": seed,
                           "params": json.dumps({"image_index": i})}
                out.append({**row, "sample_id": sample_id(row["source"], key), "source_key": key, "lineage": lineage})
        return conform(pa.Table.from_pylist(out, schema=batch.schema)) if out else batch

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        verdicts = [(r["status"], r.get("reason"), r.get("detail")) for r in rows]
        todo = []
        for i, r in enumerate(rows):
            if r["status"] != STATUS_KEPT or r.get("image"):
                continue  # rejected upstream, or finished on an earlier run: resume skips it
            if not (r.get("prompt") or "").strip():
                verdicts[i] = (STATUS_FILTERED, "empty_prompt", "prompt is empty after cleaning")
                continue
            todo.append(i)
        images = [r.get("image") for r in rows]
        widths, heights, lineages = [r.get("width") for r in rows], [r.get("height") for r in rows], [r.get("lineage") for r in rows]
        tokens, grids = [r.get("image_tokens") for r in rows], [r.get("image_token_grid") for r in rows]
        if todo:
            start = time.perf_counter()
            texts = [self.rendered_text(rows[i]["prompt"]) for i in todo]
            out = self.backend.render(texts, [rows[i]["lineage"]["seed"] for i in todo])
            self.calls += 1
            seconds = (time.perf_counter() - start) / len(todo)
            for k, (i, img) in enumerate(zip(todo, out.images)):
                images[i] = {"bytes": self.encode(img), "path": None}
                widths[i], heights[i] = img.width, img.height
                lineages[i] = self.lineage(rows[i]["lineage"], seconds)
                if out.image_tokens is not None:  # the sampled ids themselves: vq_tokenize need not re-encode the lossy image
                    tokens[i], grids[i] = out.image_tokens[k].tolist(), list(out.grid)
        out = with_verdicts(batch, verdicts)
        for name, values, typ in (("image", images, IMAGE_TYPE), ("width", widths, pa.int32()), ("height", heights, pa.int32()),
                                  ("image_tokens", tokens, pa.list_(pa.int32())), ("image_token_grid", grids, pa.list_(pa.int32())),
                                  ("lineage", lineages, LINEAGE_TYPE)):
            out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, typ))
        return out

    def rendered_text(self, prompt: str) -> str:
        if self.config.render == "prompt":
            return prompt
        return re.split(r",|::", prompt, maxsplit=1)[0].strip() or prompt

    def encode(self, img) -> bytes:
        buf = io.BytesIO()
        fmt = FORMATS[self.config.image_format]
        img.save(buf, format=fmt, **({} if fmt == "PNG" else {"quality": self.config.quality}))
        return buf.getvalue()

    def lineage(self, planned: dict, seconds: float) -> dict:
        c = self.config
        params = {**json.loads(planned["params"]), "backend": c.backend, "model_path": str(self.model_dir), "revision": self.revision,
                  **{k: v for k, v in self.sampling().items() if v is not None}, "dtype": c.dtype,
                  "format": c.image_format, "quality": c.quality, "render": c.render, "seconds": round(seconds, 4)}
        params.update(self.backend.describe())
        return {**planned, "generator": f"{c.backend}:{self.model_dir}@{self.revision}", "params": json.dumps(params, sort_keys=True)}

