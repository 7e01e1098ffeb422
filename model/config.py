"""Train recipes: one YAML per stage, parsed and validated once, before any work starts.

Errors name the file and the field (`recipes/train/tiny/stage1.yaml: optim.lr: ...`). Relative
paths in a recipe are relative to the recipe file; `--data` / `--init` override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

from pipeline.schema import TASKS
from pipeline.yamlfile import describe, read_mapping

# Module groups of JanusForConditionalGeneration a recipe may train (paper, Table 2 "what trains").
MODULE_GROUPS = (
    "vision_model",  # SigLIP understanding encoder
    "aligner",  # understanding adaptor
    "vqmodel",  # VQ generation encoder/decoder (always frozen in the paper)
    "generation_embeddings",
    "generation_aligner",
    "generation_head",
    "language_model",
    "lm_head",
)


class TrainRecipeError(ValueError):
    """A train recipe that cannot run; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    dir: Path | None = Field(None, description="build directory holding shards/<stage>/")
    stage: str = Field(description="training stage name inside the build, e.g. stage1")
    max_seq_len: PositiveInt = 4096
    # Janus-Pro data carry image ids after VQ pre-tokenisation; rows without them are encoded on the fly.
    encode_missing_image_tokens: bool = True


class OptimConfig(_Strict):
    lr: PositiveFloat
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: NonNegativeFloat = 0.0
    eps: PositiveFloat = 1e-8
    grad_clip: PositiveFloat = 1.0

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"AdamW betas must be in [0, 1), got {list(value)}")
        return value


class ScheduleConfig(_Strict):
    kind: Literal["constant"] = "constant"  # Table 2: constant in every stage
    warmup_steps: NonNegativeInt = 0
    steps: PositiveInt


class BatchConfig(_Strict):
    size: PositiveInt = Field(description="global batch: rows per optimizer step")
    micro: PositiveInt = Field(description="rows per forward/backward on one worker")
    # Paper §3.1: pack several examples per row up to data.max_seq_len (block-diagonal attention,
    # per-example positions); `micro` then counts packed rows. Off: one example per padded row.
    packing: bool = False

    @model_validator(mode="after")
    def _divides(self) -> BatchConfig:
        if self.size % self.micro:
            raise ValueError(f"micro ({self.micro}) must divide size ({self.size})")
        return self


class SamplesConfig(_Strict):
    prompts: list[str] = Field(default_factory=list, description="fixed prompts for the end-of-stage image grid")
    images_per_prompt: PositiveInt = 1
    guidance: PositiveFloat = 5.0  # Janus-Pro inference default
    questions: NonNegativeInt = 4  # held-out understanding (chart) questions answered at the end
    max_new_tokens: PositiveInt = 32


class EvalCheck(_Strict):
    """A claim about an eval summary (model/eval.py): `metric` is a dotted path into it, e.g.
    generation.cfg5.attributes.colour.accuracy; it must be >= min, <= max, > the metric named by
    `above`, or <= the metric named by `at_most` plus `margin`. `required: false` records the
    claim and its outcome without failing the run (a claim the recipe reports but cannot promise)."""

    metric: str
    min: float | None = None
    max: float | None = None
    above: str | None = None
    at_most: str | None = None
    margin: float = 0.0
    required: bool = True

    @model_validator(mode="after")
    def _one(self) -> EvalCheck:
        if sum(v is not None for v in (self.min, self.max, self.above, self.at_most)) != 1:
            raise ValueError("give exactly one of min, max, above, at_most")
        return self


class EvalConfig(_Strict):
    """`janus-forge eval` after the stage (the tiny repro runs it), and what it must show."""

    guidance: list[PositiveFloat] = [5.0, 1.0]
    per_category: NonNegativeInt = 40
    max_questions: NonNegativeInt = 200
    checks: list[EvalCheck] = Field(default_factory=list)
    init_checks: list[EvalCheck] = Field(default_factory=list, description="claims about the untrained init (stage 1 only)")


class TrainRecipe(_Strict):
    name: str
    stage: Literal[1, 2, 3] = Field(description="paper stage: I adaptors, II unified pre-training, III SFT")
    seed: int = 0
    data: DataConfig
    init: Path | None = Field(None, description="base model dir, or the previous stage's output dir")
    optim: OptimConfig
    schedule: ScheduleConfig
    batch: BatchConfig
    ratio: dict[Literal["understanding", "text", "generation"], NonNegativeFloat]
    trainable: list[str]
    cfg_drop: float = Field(0.1, ge=0.0, lt=1.0, description="P(generation prompt -> pad), CFG training")
    checkpoint_every: PositiveInt = 1000
    keep_checkpoints: PositiveInt = 2
    workers: PositiveInt = 1
    # The compute dtype only: weights, gradients and AdamW state are fp32 whatever the checkpoint's
    # dtype (model/train.py); bf16 runs the forward under torch.autocast.
    precision: Literal["fp32", "bf16"] = Field("fp32", description="compute dtype: fp32, or bf16 autocast over fp32 weights")
    fsdp: bool = False  # shard parameters (7B); DDP otherwise
    # Recompute each decoder layer's activations in backward instead of keeping them (memory for
    # compute, about one extra forward); the loss and gradients are unchanged.
    activation_checkpointing: bool = False
    # MFU denominator: one device's peak dense TFLOP/s for `precision`. Unset: looked up by GPU
    # name (model/flops.py PEAK_TFLOPS); on a CPU or an unlisted GPU MFU is then not reported.
    peak_tflops: PositiveFloat | None = None
    samples: SamplesConfig = SamplesConfig()
    eval: EvalConfig = EvalConfig()
    path: Path | None = None  # the file it came from (set by the loader)

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, value: dict[str, float]) -> dict[str, float]:
        if sum(value.values()) <= 0:
            raise ValueError("ratio must have at least one positive share")
        return {task: float(value.get(task, 0.0)) for task in TASKS}

    @field_validator("trainable")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        unknown = [g for g in value if g not in MODULE_GROUPS]
        if unknown:
            raise ValueError(f"unknown module groups {unknown}; known: {list(MODULE_GROUPS)}")
        if not value:
            raise ValueError("at least one module group must train")
        return value

    def share(self, task: str) -> float:
        return self.ratio[task] / sum(self.ratio.values())


def load_train_recipe(path: str | Path, data: str | Path | None = None, init: str | Path | None = None) -> TrainRecipe:
    """Parse, override (--data / --init) and validate a train recipe; raises TrainRecipeError."""
    path, raw = read_mapping(path, TrainRecipeError, "train recipe")
    if "path" in raw:
        raise TrainRecipeError(f"{path}: path: set by the loader, not a recipe field")
    try:
        recipe = TrainRecipe.model_validate({**raw, "path": path})
    except ValidationError as err:
        raise TrainRecipeError(describe(path, err)) from None
    # Overrides are cwd-relative (they come from a shell); recipe paths are recipe-relative.
    data_dir = Path(data).resolve() if data is not None else _rel(path, recipe.data.dir)
    init_dir = Path(init).resolve() if init is not None else _rel(path, recipe.init)
    if data_dir is None:
        raise TrainRecipeError(f"{path}: data.dir: no build directory (set it or pass --data DIR)")
    if init_dir is None:
        raise TrainRecipeError(f"{path}: init: no init model (set it or pass --init DIR)")
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"dir": data_dir}), "init": init_dir})


def _rel(recipe_path: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = Path(value).expanduser()
    return value if value.is_absolute() else (recipe_path.parent / value).resolve()
