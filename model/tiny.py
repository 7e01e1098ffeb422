"""Build, save and load Janus-Pro models: tiny random-init ones for tests, real ones from a local dir."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessor,
    JanusProcessor,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
)

from model.tokenizer import BOI, PAD, train_tokenizer


class TinySpec(BaseModel):
    """Dimensions of a random-init Janus; every field maps onto one JanusConfig sub-field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = 32
    patch_size: int = 4  # ViT patch == VQ downsampling, so both see the same grid (8 x 8 = 64 ids)
    vocab_size: int = 512  # BPE target; the tokenizer's real length is used for the config
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 256
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vq_codebook: int = 256
    vq_embed_dim: int = 8
    vq_base_channels: int = 32  # GroupNorm(32) inside the VQ needs multiples of 32
    vq_latent_channels: int = 32
    vq_res_blocks: int = 1
    # Fit the VQ on the shapes world when the preset is built (model/tiny_vq.py): 0 keeps it random.
    vq_fit_steps: int = 0
    # Pre-train the vision tower on the shapes world's captions, SigLIP's role (model/tiny_vision.py).
    vision_fit_steps: int = 0

    @model_validator(mode="after")
    def _check(self) -> TinySpec:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        levels = self.patch_size.bit_length() - 1
        if self.patch_size != 2**levels or levels < 1:
            raise ValueError(f"patch_size={self.patch_size} must be a power of two >= 2 (VQ downsamples by 2 per level)")
        for name in ("vq_base_channels", "vq_latent_channels"):
            if getattr(self, name) % 32:
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of 32 (VQ GroupNorm(32))")
        return self

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


# Named tiny presets; real checkpoints are never built, only loaded (see REAL_CHECKPOINTS).
# "tiny" is what the repro trains: its VQ is fitted on the shapes world, so generations decode
# to recognisable images. "tiny-random" keeps every weight random (fast to build: unit tests).
PRESETS: dict[str, TinySpec] = {"tiny": TinySpec(vq_fit_steps=600, vision_fit_steps=1200), "tiny-random": TinySpec()}
# Names the trainer/recipes may use for real weights: the HF repo they come from, which must
# already be converted and sitting in a local dir (nothing is downloaded at run time).
REAL_CHECKPOINTS: dict[str, str] = {
    "janus-pro-1b": "deepseek-community/Janus-Pro-1B",
    "janus-pro-7b": "deepseek-community/Janus-Pro-7B",
}


class ModelDirError(ValueError):
    """A model dir is missing or holds something other than a Janus checkpoint."""


def janus_config(spec: TinySpec, tokenizer) -> JanusConfig:
    """A JanusConfig with `spec`'s dimensions and the tokenizer's special-token ids."""
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,  # real Janus-Pro has its own lm_head
    )
    vision = JanusVisionConfig(
        hidden_size=spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        mlp_ratio=2.0,
        projection_dim=spec.hidden_size,  # understanding aligner outputs LLM embeddings
        num_image_tokens=spec.grid**2,  # generate() samples this many VQ ids per image
    )
    levels = spec.patch_size.bit_length() - 1
    vq = JanusVQVAEConfig(
        embed_dim=spec.vq_embed_dim,
        num_embeddings=spec.vq_codebook,
        latent_channels=spec.vq_latent_channels,
        base_channels=spec.vq_base_channels,
        channel_multiplier=[1] * (levels + 1),  # levels downsamplings: 2**levels == patch_size
        num_res_blocks=spec.vq_res_blocks,
        projection_dim=spec.hidden_size,  # generation aligner outputs LLM embeddings
        image_token_embed_dim=spec.hidden_size,  # generation head reads LLM hidden states
    )
    return JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
        tie_word_embeddings=False,
    )


def set_generation_defaults(model: JanusForConditionalGeneration, tokenizer) -> None:
    """Fill the generation config the way the transformers Janus converter does for real checkpoints."""
    gc = model.generation_config
    # With _from_model_config=True, GenerationConfig.from_pretrained drops every non-standard
    # key on reload, generation_kwargs included (the converter sets it False for the same reason).
    gc._from_model_config = False
    gc.pad_token_id = tokenizer.convert_tokens_to_ids(PAD)
    gc.bos_token_id = tokenizer.bos_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.temperature = 1.0
    gc.guidance_scale = 5.0
    # generate(generation_mode="image") reads generation_kwargs["boi_token_id"] to keep BOI
    # unmasked in the unconditional CFG row; a plain GenerationConfig lacks it.
    gc.generation_kwargs = {**(getattr(gc, "generation_kwargs", None) or {}), "boi_token_id": tokenizer.convert_tokens_to_ids(BOI)}


def build_tiny_janus(out_dir: str | Path, preset: str | TinySpec = "tiny", seed: int = 0) -> Path:
    """Train a tokenizer, random-init a Janus with a fixed seed and save model + processor to `out_dir`."""
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    out = Path(out_dir)
    tokenizer = train_tokenizer(spec.vocab_size)
    image_processor = JanusImageProcessor(
        size={"height": spec.image_size, "width": spec.image_size},
        min_size=min(14, spec.image_size),
        # Janus-Pro normalises to [-1, 1] (mean = std = 0.5), which is also what the VQ expects;
        # the pad colour follows the mean: (127, 127, 127).
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        use_default_system_prompt=True,
        num_image_tokens=spec.grid**2,
    )
    config = janus_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config)
    set_generation_defaults(model, tokenizer)
    fits = {}
    if spec.vq_fit_steps:
        from model.tiny_vq import fit_vq

        fits["vq"] = _cached_fit("vq", model.model.vqmodel, spec, seed,
                                 lambda vq: fit_vq(vq, spec.image_size, steps=spec.vq_fit_steps, seed=seed))
    if spec.vision_fit_steps:
        from model.tiny_vision import fit_vision

        fits["vision"] = _cached_fit("vision", model.model.vision_model, spec, seed,
                                     lambda tower: fit_vision(tower, spec.image_size, steps=spec.vision_fit_steps, seed=seed))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    for name, stats in fits.items():
        (out / f"{name}_fit.json").write_text(json.dumps(stats, indent=2))
    return out


def _cached_fit(name: str, module: torch.nn.Module, spec: TinySpec, seed: int, fit) -> dict:
    """Run `fit(module)` (in place, returns stats); cached by spec, seed and the fitting code in
    $JANUS_FORGE_VQ_CACHE when set (tests build many presets; fits are deterministic, so the cache
    changes no result)."""
    from safetensors.torch import load_file, save_file

    import model.tiny_vision
    import model.tiny_vq
    import stages.shapes_world

    cache = os.environ.get("JANUS_FORGE_VQ_CACHE")
    code = b"".join(Path(m.__file__).read_bytes() for m in (model.tiny_vq, model.tiny_vision, stages.shapes_world))
    key = hashlib.sha256(f"{name}:{spec.model_dump_json()}:{seed}:".encode() + code).hexdigest()[:16]
    weights, stats_file = Path(cache or ".") / f"{name}-{key}.safetensors", Path(cache or ".") / f"{name}-{key}.json"
    if cache and weights.is_file():
        module.load_state_dict(load_file(weights))
        return json.loads(stats_file.read_text())
    stats = fit(module)
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, weights)
        stats_file.write_text(json.dumps(stats))
    return stats


def check_model_dir(local_dir: str | Path) -> Path:
    """Raise ModelDirError unless `local_dir` holds a Janus (`model_type == "janus"`) checkpoint."""
    path = Path(local_dir)
    config_file = path / "config.json"
    if not path.is_dir():
        raise ModelDirError(f"model dir {path} does not exist (weights are never downloaded at run time)")
    if not config_file.is_file():
        found = sorted(p.name for p in path.iterdir())[:10]
        raise ModelDirError(f"model dir {path} has no config.json; found {found}")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "janus":
        raise ModelDirError(
            f"model dir {path} holds model_type={model_type!r}, expected 'janus' "
            "(a transformers-converted Janus-Pro checkpoint, e.g. deepseek-community/Janus-Pro-1B)"
        )
    return path


def resolve_model_dir(name_or_dir: str | Path, models_root: str | Path) -> Path:
    """Map a preset name or a path to a local checkpoint dir; tiny presets are built on first use.

    Real names (REAL_CHECKPOINTS) must already sit converted under `models_root/<name>`.
    """
    name = str(name_or_dir)
    if name in PRESETS:
        out = Path(models_root) / name
        if not (out / "config.json").is_file():
            build_tiny_janus(out, name)
        return out
    if name in REAL_CHECKPOINTS:
        out = Path(models_root) / name
        if not out.is_dir():
            raise ModelDirError(
                f"model dir {out} does not exist; fetch it once with "
                f"`hf download {REAL_CHECKPOINTS[name]} --local-dir {out}` (nothing is downloaded at run time)"
            )
        return check_model_dir(out)
    return check_model_dir(name)


def resolve_recipe_model(value: str, recipe_dir: Path, models_root: Path) -> Path:
    """A model a recipe names: a preset or real-checkpoint name (under models_root), a model placed
    under models_root by name (e.g. `teacher`, the stage-I checkpoint janus-forge repro puts
    there), else a path relative to the recipe. Checked like any checkpoint dir; tiny presets are
    built on first use."""
    if value in PRESETS or value in REAL_CHECKPOINTS:
        return resolve_model_dir(value, models_root)
    path = Path(value).expanduser()
    if not path.is_absolute() and len(path.parts) == 1 and (Path(models_root) / value / "config.json").is_file():
        return check_model_dir(Path(models_root) / value)
    if not path.is_absolute() and len(path.parts) == 1 and not (Path(recipe_dir) / path).exists():
        raise ModelDirError(f"no model named {value!r}: neither {Path(models_root) / value} nor {Path(recipe_dir) / path} "
                            "exists (a teacher is placed under the build's models/ by `janus-forge repro` after stage I, "
                            "or by hand: copy a checkpoint dir there)")
    return resolve_model_dir(path if path.is_absolute() else Path(recipe_dir) / path, models_root)


def load_janus(local_dir: str | Path, dtype: torch.dtype | None = None):
    """Load (model, processor) from a local dir: the one path for tiny and real checkpoints.

    dtype None keeps the checkpoint's own dtype (bf16 for the published Janus-Pro weights), which
    suits inference; the trainer asks for torch.float32 (model/train.py, MASTER_DTYPE).
    """
    path = check_model_dir(local_dir)
    kwargs = {"local_files_only": True}
    model = JanusForConditionalGeneration.from_pretrained(path, dtype=dtype, **kwargs)
    processor = JanusProcessor.from_pretrained(path, **kwargs)
    model.eval()
    return model, processor


def load_janus_empty(local_dir: str | Path, dtype: torch.dtype = torch.float32):
    """(model on the meta device, processor): the architecture with no storage. FSDP ranks other than
    0 start from this and receive only their shards from rank 0 (model/parallel.py)."""
    from transformers import AutoConfig

    path = check_model_dir(local_dir)
    with torch.device("meta"):
        model = JanusForConditionalGeneration._from_config(AutoConfig.from_pretrained(path, local_files_only=True), dtype=dtype)
    processor = JanusProcessor.from_pretrained(path, local_files_only=True)
    model.eval()
    return model, processor


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Build a tiny random-init Janus-Pro checkpoint.")
    parser.add_argument("out_dir")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_janus(args.out_dir, args.preset, args.seed))
