"""Data recipes: one YAML file, parsed and validated once, before any work starts.

Errors name the file and the field (`sources.prompts.steps[0].min_words: ...`). Code below
this module receives typed objects, never raw YAML dicts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from pipeline.input_hashes import content_hashes
from pipeline.schema import TASKS
from pipeline.yamlfile import describe, read_mapping
from stages import load_all
from stages.base import SOURCES, STAGES, SourceConfig, StageConfig


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingStageMix(_Strict):
    ratio: dict[Literal["understanding", "text", "generation"], float]
    sources: dict[str, float] = Field(description="weight of each source inside its task")
    batches: PositiveInt = Field(description="global batches to write for this training stage")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, value: dict[str, float]) -> dict[str, float]:
        for task, share in value.items():
            if share < 0:
                raise ValueError(f"ratio of {task} must be >= 0, got {share}")
        if sum(value.values()) <= 0:
            raise ValueError("ratio must have at least one positive share")
        return value

    @field_validator("sources")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if weight <= 0:
                raise ValueError(f"weight of source {name!r} must be > 0, got {weight}")
        return value


class MixConfig(_Strict):
    seed: int = 0
    global_batch: PositiveInt = 16
    rows_per_shard: PositiveInt = 4096
    # what to do when a source runs out: stop the training stage at the last full batch,
    # repeat the source in the same order, or upsample it (a fresh shuffle each pass)
    on_exhausted: Literal["stop", "repeat", "upsample"] = "repeat"
    shuffle_buffer: PositiveInt = 8192
    stages: dict[str, TrainingStageMix]


class SourcePlan(_Strict):
    """One source: how it is read and the chain of stages its rows go through."""

    name: str
    config: SourceConfig
    task: str
    steps: tuple[StageConfig, ...]


class Recipe(_Strict):
    name: str
    seed: int = 0
    rows_per_partition: PositiveInt = 2048
    sources: dict[str, SourcePlan]
    mix: MixConfig
    path: Path
    hash: str

    @property
    def dir(self) -> Path:
        return self.path.parent


class _RecipeFile(_Strict):
    name: str
    seed: int = 0
    rows_per_partition: PositiveInt = 2048
    sources: dict[str, dict[str, Any]]
    mix: MixConfig


def _raise(path: Path, error: ValidationError, prefix: tuple = ()) -> None:
    raise RecipeError(describe(path, error, prefix)) from None


def _validate_source(path: Path, name: str, raw: dict[str, Any]) -> SourcePlan:
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: sources.{name}: expected a mapping")
    raw = dict(raw)
    steps_raw = raw.pop("steps", [])
    kind = raw.get("kind")
    if kind not in SOURCES:
        raise RecipeError(f"{path}: sources.{name}.kind: unknown source kind {kind!r}; known: {sorted(SOURCES)}")
    cls = SOURCES[kind]
    try:
        config = cls.Config.model_validate(raw, context={"recipe_dir": path.parent})
    except ValidationError as err:
        _raise(path, err, ("sources", name))
    if not isinstance(steps_raw, list):
        raise RecipeError(f"{path}: sources.{name}.steps: expected a list of stages")
    steps = []
    for i, step in enumerate(steps_raw):
        stage = step.get("stage") if isinstance(step, dict) else None
        if stage not in STAGES:
            raise RecipeError(f"{path}: sources.{name}.steps[{i}].stage: unknown stage {stage!r}; known: {sorted(STAGES)}")
        try:
            steps.append(STAGES[stage].Config.model_validate(step, context={"recipe_dir": path.parent}))
        except ValidationError as err:
            _raise(path, err, ("sources", name, "steps", i))
    return SourcePlan(name=name, config=config, task=getattr(config, "task", None) or cls.task, steps=tuple(steps))


def _check_mix(path: Path, sources: dict[str, SourcePlan], mix: MixConfig) -> None:
    for stage_name, stage in mix.stages.items():
        for src in stage.sources:
            if src not in sources:
                raise RecipeError(f"{path}: mix.stages.{stage_name}.sources.{src}: no such source; known: {sorted(sources)}")
        for task, share in stage.ratio.items():
            if share > 0 and not any(sources[s].task == task for s in stage.sources):
                raise RecipeError(
                    f"{path}: mix.stages.{stage_name}.ratio.{task}: share {share} but none of its sources "
                    f"({', '.join(stage.sources) or 'none'}) gives {task} rows"
                )


def _check_build_scope(path: Path, sources: dict[str, SourcePlan]) -> None:
    """A build-wide step (`scope: build`) is one plan over its sources: one config, once per source."""
    seen: dict[str, tuple[str, dict]] = {}
    for name, plan in sources.items():
        steps = [s for s in plan.steps if getattr(s, "scope", None) == "build"]
        for i, step in enumerate(steps):
            if any(o.stage == step.stage for o in steps[:i]):
                raise RecipeError(f"{path}: sources.{name}: {step.stage} with scope: build appears twice")
            config = step.model_dump(mode="json")
            first = seen.setdefault(step.stage, (name, config))
            if first[1] != config:
                raise RecipeError(f"{path}: sources.{name}: {step.stage} with scope: build must have the same settings in "
                                  f"every source it covers; it differs from sources.{first[0]}")


def recipe_hash(file_model: dict[str, Any], inputs: list[Path]) -> str:
    """Hash of what decides the outputs: the validated recipe (with each stage's code version) and
    each input file's name, size and content hash (cached by size and mtime, see input_hashes)."""
    digest = hashlib.sha256(json.dumps(file_model, sort_keys=True, default=str).encode())
    for p, content in zip(inputs, content_hashes(inputs)):
        digest.update(f"{p.name}:{p.stat().st_size}:{content}".encode())
    return digest.hexdigest()


def load_recipe(path: str | Path) -> Recipe:
    """Parse and validate a recipe; raises RecipeError naming the file and field."""
    load_all()
    path, raw = read_mapping(path, RecipeError)
    try:
        parsed = _RecipeFile.model_validate(raw)
    except ValidationError as err:
        _raise(path, err)
    sources = {name: _validate_source(path, name, body) for name, body in parsed.sources.items()}
    for plan in sources.values():
        if plan.task not in TASKS:
            raise RecipeError(f"{path}: sources.{plan.name}.task: {plan.task!r} is not one of {TASKS}")
    _check_mix(path, sources, parsed.mix)
    _check_build_scope(path, sources)
    model = {
        **parsed.model_dump(mode="json", exclude={"sources"}),
        # `version`: a stage whose code changes what it outputs bumps it, and old partitions are not reused
        "sources": {n: {"config": p.config.model_dump(mode="json"), "version": SOURCES[p.config.kind].version,
                        "steps": [{**s.model_dump(mode="json"), "version": STAGES[s.stage].version} for s in p.steps]}
                    for n, p in sources.items()},
    }
    from stages.base import StageContext

    inputs: list[Path] = []
    for plan in sources.values():
        ctx = StageContext(build_id="", seed=parsed.seed, recipe_dir=path.parent, source=plan.name, task=plan.task)
        inputs += SOURCES[plan.config.kind](plan.config, ctx).files()
    return Recipe(
        name=parsed.name, seed=parsed.seed, rows_per_partition=parsed.rows_per_partition,
        sources=sources, mix=parsed.mix, path=path, hash=recipe_hash(model, inputs),
    )
