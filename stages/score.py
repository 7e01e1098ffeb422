"""Score images with open_clip (LAION aesthetic head, text-image cosine) and filter by recipe thresholds."""

from __future__ import annotations

import json
from typing import Literal

import pyarrow as pa
import torch
from pydantic import Field, PositiveInt

from pipeline.schema import SCORES_TYPE, STATUS_FAILED, STATUS_FILTERED, STATUS_KEPT
from stages.base import Resources, Stage, StageConfig, StageError, models_root, register, with_verdicts
from stages.clip_models import (LAION_HEAD, check_activation, check_weights_fit, clip_config, head_input_dim, load_aesthetic_head,
                                load_clip, resolve_file, shared_dir)
from stages.image_checks import PIL_DEFAULT_MAX_PIXELS, ImageLimits, ImageRejected, check, decode, pixel_hash

EMBEDDING = pa.field("clip_embedding", pa.list_(pa.float32()))  # L2-normalised, for dedup_images
PIXEL_HASH = pa.field("pixel_hash", pa.string())  # hash of decoded pixels, for dedup_images


TINY_CLIP, TINY_CLIP_NAME = "tiny", "tiny-clip-768"


class ScoreConfig(StageConfig):
    stage: Literal["score_images"] = "score_images"
    # OpenAI's ViT-L/14 (what the LAION head was fitted on) uses QuickGELU: open_clip's plain
    # ViT-L-14 is GELU and would take those weights silently with shifted embeddings.
    clip_model: str = Field("ViT-L-14-quickgelu", description="open_clip architecture name")
    clip_pretrained: str = Field(description="local open_clip weights file (OpenAI ViT-L/14 for the LAION head), "
                                 "or `tiny`: a random-init 768-d CLIP built on first use under models_root")
    clip_weights: Literal["openai", "other"] = Field(
        "openai", description="who trained clip_pretrained: openai (QuickGELU, needs a -quickgelu clip_model) or other")
    models_root: str | None = Field(None, description="where `tiny` is built (relative to the recipe); default <build>/models")
    clip_config_dir: str | None = Field(None, description="folder of extra open_clip model-config JSONs")
    aesthetic_head: str | None = Field(None, description="head weights; default: shared/" + LAION_HEAD)
    # LAION-Aesthetics v2 "5+" cut; NeMo Curator's 0.5 default would keep nearly everything.
    min_aesthetic: float = 5.0
    # ViT-L/14 cosines of matching pairs sit around 0.2-0.35 (DataComp's L/14 30% cut ~0.24);
    # Midjourney prompts are long and stylised, so the default is a little looser.
    min_clip_similarity: float = 0.2
    min_side: PositiveInt = 256
    max_aspect_ratio: float = Field(3.0, ge=1.0)
    min_pixel_std: float = Field(2.0, ge=0.0, description="grey-level std below this is near-uniform")
    max_image_pixels: PositiveInt = PIL_DEFAULT_MAX_PIXELS
    batch_size: PositiveInt = 64
    gpus: float = Field(0.0, ge=0.0, description="GPUs per actor (0 on a CPU machine)")
    actors: PositiveInt = 1
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"


def row_text(row: dict) -> str | None:
    """Text CLIP compares the image with: the prompt, else the assistant's first answer, else text."""
    if row.get("prompt"):
        return row["prompt"]
    for turn in row.get("conversation") or []:
        if turn.get("role") == "assistant" and turn.get("content"):
            return turn["content"]
    return row.get("text") or None


@register
class ScoreImages(Stage):
    name = "score_images"
    version = 2  # 2: decode() applies EXIF, scales 16-bit, composites alpha on white
    Config = ScoreConfig
    needs = ("image",)
    adds = ("scores", "width", "height")
    extra_fields = (EMBEDDING, PIXEL_HASH)

    def __init__(self, config: ScoreConfig, context):
        super().__init__(config, context)
        self.batch_size = config.batch_size
        base = context.recipe_dir
        if config.clip_pretrained == TINY_CLIP:
            clip_dir = models_root(context, config.models_root) / "clip"
            self.clip_name, self.pretrained, self.config_dir = TINY_CLIP_NAME, clip_dir / f"{TINY_CLIP_NAME}.pt", clip_dir / "configs"
        else:
            self.clip_name = config.clip_model
            self.pretrained = resolve_file(config.clip_pretrained, base)
            self.config_dir = resolve_file(config.clip_config_dir, base)
        self.head_path = resolve_file(config.aesthetic_head, base, shared_dir() / LAION_HEAD)
        self.limits = ImageLimits(config.min_side, config.max_aspect_ratio, config.min_pixel_std)

    def resources(self) -> Resources:
        return Resources(cpus=1.0, gpus=self.config.gpus, actors=self.config.actors)

    def preflight(self) -> None:
        if self.config.precision != "fp32" and self.config.gpus == 0:
            raise StageError(f"score_images.precision: {self.config.precision} needs a GPU (gpus > 0); use fp32 on CPU")
        if self.config.clip_pretrained == TINY_CLIP and not self.pretrained.is_file():
            from model.tiny_clip import build_tiny_clip

            build_tiny_clip(self.pretrained.parent, name=TINY_CLIP_NAME)
        cfg = clip_config(self.clip_name, self.config_dir)
        own_tiny = self.config.clip_pretrained == TINY_CLIP  # random-init, built here: no trained activation to match
        if not own_tiny:
            check_activation(self.clip_name, cfg, self.config.clip_weights)
        if not self.pretrained.is_file():
            raise StageError(f"score_images.clip_pretrained: weights file not found: {self.pretrained}")
        if not own_tiny:
            check_weights_fit(self.clip_name, cfg, self.pretrained, self.config.clip_weights)
        head_dim = head_input_dim(self.head_path)
        clip_dim = int(cfg["embed_dim"])
        if head_dim != clip_dim:
            raise StageError(
                f"score_images: open_clip model {self.clip_name!r} gives {clip_dim}-d embeddings but the "
                f"aesthetic head {self.head_path.name} takes {head_dim}-d (the LAION head needs ViT-L-14)"
            )

    def setup(self) -> None:
        self.preflight()
        self.device = "cuda" if self.config.gpus > 0 and torch.cuda.is_available() else "cpu"
        self.model, self.preprocess, self.tokenizer = load_clip(
            self.clip_name, self.pretrained, self.config_dir, self.device, self.config.precision
        )
        self.head = load_aesthetic_head(self.head_path).to(self.device)

    @torch.inference_mode()
    def embed(self, images: list, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor, list[float | None]]:
        """Normalised image embeddings, aesthetic scores and text cosines (None without text)."""
        dtype = next(self.model.parameters()).dtype  # fp16/bf16 towers want inputs of their own dtype
        pixels = torch.stack([self.preprocess(img) for img in images]).to(self.device, dtype)
        img = self.model.encode_image(pixels).float()
        img = img / img.norm(dim=-1, keepdim=True)
        aesthetic = self.head(img)
        sims: list[float | None] = [None] * len(images)
        with_text = [i for i, t in enumerate(texts) if t]
        if with_text:
            tokens = self.tokenizer([texts[i] for i in with_text]).to(self.device)
            txt = self.model.encode_text(tokens).float()
            txt = txt / txt.norm(dim=-1, keepdim=True)
            cos = (img[with_text] * txt).sum(-1).tolist()
            for i, c in zip(with_text, cos):
                sims[i] = c
        return img.cpu(), aesthetic.cpu(), sims

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        verdicts: list[tuple] = [(r["status"], r.get("reason"), r.get("detail")) for r in rows]
        n = len(rows)
        scores, embeds, hashes = [r.get("scores") for r in rows], [None] * n, [None] * n
        widths, heights = [r.get("width") for r in rows], [r.get("height") for r in rows]
        todo, images = [], []
        for i, row in enumerate(rows):
            if row["status"] != STATUS_KEPT:
                continue  # already rejected upstream: passes through untouched
            try:
                img = decode((row.get("image") or {}).get("bytes"), self.config.max_image_pixels)
            except ImageRejected as err:
                verdicts[i] = (STATUS_FAILED, err.reason, str(err))
                continue
            widths[i], heights[i], hashes[i] = img.width, img.height, pixel_hash(img)
            bad = check(img, self.limits)
            if bad:
                verdicts[i] = (STATUS_FILTERED, *bad)
                continue
            todo.append(i)
            images.append(img)
        if todo:
            emb, aesthetic, sims = self.embed(images, [row_text(rows[i]) for i in todo])
            for k, i in enumerate(todo):
                a, s = float(aesthetic[k]), sims[k]
                scores[i] = {"aesthetic": a, "clip_similarity": s}
                embeds[i] = emb[k].tolist()
                verdicts[i] = self.verdict(a, s)
        out = with_verdicts(batch, verdicts)
        out = out.set_column(out.schema.get_field_index("scores"), "scores", pa.array(scores, SCORES_TYPE))
        out = out.set_column(out.schema.get_field_index("width"), "width", pa.array(widths, pa.int32()))
        out = out.set_column(out.schema.get_field_index("height"), "height", pa.array(heights, pa.int32()))
        for field, values in ((EMBEDDING, embeds), (PIXEL_HASH, hashes)):
            column = pa.array(values, field.type)
            idx = out.schema.get_field_index(field.name)
            out = out.set_column(idx, field, column) if idx >= 0 else out.append_column(field, column)
        return out

    def verdict(self, aesthetic: float, clip: float | None) -> tuple[str, str | None, str]:
        """Thresholds travel in the detail JSON so reports and DuckDB cuts see what was applied."""
        c = self.config
        detail = json.dumps({"aesthetic": round(aesthetic, 4), "clip_similarity": None if clip is None else round(clip, 4),
                             "min_aesthetic": c.min_aesthetic, "min_clip_similarity": c.min_clip_similarity})
        if aesthetic < c.min_aesthetic:
            return STATUS_FILTERED, "low_aesthetic", detail
        if clip is not None and clip < c.min_clip_similarity:
            return STATUS_FILTERED, "low_clip_similarity", detail
        return STATUS_KEPT, None, detail
