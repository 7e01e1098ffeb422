"""The stage contract: sources read rows, stages give every row a verdict. No Ray in here.

A stage is a small class: a registry name, a typed `Config`, the columns it `needs` and
`adds`, its `resources`, and `process(batch) -> batch` over Arrow tables that returns every
input row marked kept, filtered (with a reason) or failed (with an error). The runner
(pipeline/runner.py) maps stages onto Ray Data; a stage is testable by calling `run()` on a
table built with `pipeline.schema.make_rows`.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from pipeline.schema import (
    STATUS_FAILED,
    STATUS_FILTERED,
    STATUS_KEPT,
    conform,
    make_rows,
)

STAGES: dict[str, type["Stage"]] = {}
SOURCES: dict[str, type["Source"]] = {}


class StageError(RuntimeError):
    """A start-up problem that stops the build before (or instead of) per-row work."""


class StageConfig(BaseModel):
    """Base of every stage's typed config; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stage: str


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage asks Ray for. `actors` > 0 runs an actor pool (models)."""

    cpus: float = 1.0
    gpus: float = 0.0
    actors: int = 0


@dataclass(frozen=True)
class StageContext:
    """What a stage may know about the build it runs in."""

    build_id: str
    seed: int
    recipe_dir: Path
    source: str
    task: str
    build_dir: Path | None = None


def models_root(context: StageContext, value: str | None) -> Path:
    """Where named models (tiny presets, local copies of real checkpoints) live.

    A recipe value is relative to the recipe; unset, it is `<build dir>/models`, so tiny
    presets built on first use stay inside the build and never in the source tree.
    """
    if value is not None:
        p = Path(value).expanduser()
        return p if p.is_absolute() else context.recipe_dir / p
    return (context.build_dir or context.recipe_dir) / "models"


def register(cls):
    """Class decorator: make a Stage or Source reachable by its `name` from recipes."""
    table = SOURCES if issubclass(cls, Source) else STAGES
    if cls.name in table and table[cls.name] is not cls:
        raise ValueError(f"two classes registered as {cls.name!r}")
    table[cls.name] = cls
    return cls


def with_verdicts(batch: pa.Table, verdicts: Sequence[tuple[str, str | None, str | None]]) -> pa.Table:
    """Attach (status, reason, detail) per row to a batch."""
    if len(verdicts) != batch.num_rows:
        raise ValueError(f"{len(verdicts)} verdicts for {batch.num_rows} rows")
    batch = conform(batch)
    for i, name in enumerate(("status", "reason", "detail")):
        idx = batch.schema.get_field_index(name)
        batch = batch.set_column(idx, name, pa.array([v[i] for v in verdicts], pa.string()))
    return batch


class Stage:
    """One step over batches of work rows. Subclasses set the class attributes and `process`."""

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    needs: ClassVar[tuple[str, ...]] = ()  # sample columns that must be non-null on input
    adds: ClassVar[tuple[str, ...]] = ()  # columns it fills in
    extra_fields: ClassVar[tuple[pa.Field, ...]] = ()  # work-only columns it adds
    batch_size: ClassVar[int] = 256
    # A global stage sees every kept row's `needs` columns once (plan) before mapping.
    is_global: ClassVar[bool] = False
    # Bump when a code change alters what the stage outputs: it is part of the recipe hash, so
    # partitions written by the old code are not resumed as if they were current.
    version: ClassVar[int] = 1

    def __init__(self, config: StageConfig, context: StageContext):
        self.config = config
        self.context = context
        self._ready = False

    # -- hooks ---------------------------------------------------------------------------
    def resources(self) -> Resources:
        return Resources()

    def preflight(self) -> None:
        """Checks run on the driver before any work (weights present, shapes fit, ...)."""

    def setup(self) -> None:
        """Load models here: runs once per worker, not on the driver."""

    def plan(self, table: pa.Table) -> None:
        """Global stages only: all kept input rows (sample_id + needs), sorted by sample_id."""

    def fan_out(self, batch: pa.Table) -> pa.Table:
        """Rows to process for a batch read from the previous stage (e.g. k images per prompt)."""
        return batch

    def process(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    # -- resume hooks (pipeline/runner.py): a committed partition is final unless reopen says not
    def reopen(self, output: Path) -> bool:
        """On resume: should this committed output be redone (e.g. rows that failed transiently)?"""
        return False

    def resume(self, batch: pa.Table, previous: pa.Table) -> pa.Table:
        """Redo a reopened partition; `previous` is its earlier output (keep what was final)."""
        return self.run(batch)

    def committed(self) -> None:
        """Called after the runner commits a partition this worker produced (drop scratch files)."""

    # -- the base does the counting --------------------------------------------------------
    def run(self, batch: pa.Table) -> pa.Table:
        """Process a batch in `batch_size` slices; every row comes back with a verdict."""
        if not self._ready:
            self.setup()
            self._ready = True
        batch = conform(self.fan_out(conform(batch)))
        outputs = [self._run_slice(batch.slice(i, self.batch_size)) for i in range(0, batch.num_rows, self.batch_size)]
        return pa.concat_tables(outputs, promote_options="permissive") if outputs else conform(batch)

    def _run_slice(self, batch: pa.Table) -> pa.Table:
        try:
            out = conform(self.process(batch))
        except StageError:
            raise
        except Exception:
            if batch.num_rows == 1:
                return with_verdicts(batch, [(STATUS_FAILED, "exception", _short_error())])
            # Isolate the row that broke the batch: the rest of the batch still goes through.
            return pa.concat_tables([self._run_slice(batch.slice(i, 1)) for i in range(batch.num_rows)], promote_options="permissive")
        _check_accounting(self.name, batch, out)
        return out


class Source:
    """Reads one input file into work rows. Unreadable records become failed rows, not crashes."""

    name: ClassVar[str]
    Config: ClassVar[type[SourceConfig]] = SourceConfig
    task: ClassVar[str]
    version: ClassVar[int] = 1  # as Stage.version: bump when the rows it reads change

    def __init__(self, config: SourceConfig, context: StageContext):
        self.config = config
        self.context = context

    def files(self) -> list[Path]:
        """Input files in a fixed order (their index names the work partitions)."""
        return []

    def preflight(self) -> None:
        """Cheap checks on the driver before any work: columns present, files readable."""

    def read(self, path: Path) -> Iterator[pa.Table]:
        raise NotImplementedError


def _short_error() -> str:
    lines = traceback.format_exc().strip().splitlines()
    return lines[-1][:500] if lines else "unknown error"


def _check_accounting(stage: str, before: pa.Table, after: pa.Table) -> None:
    """A stage must return each input row exactly once; anything else is a bug in the stage."""
    if after.num_rows != before.num_rows:
        raise StageError(f"stage {stage!r} returned {after.num_rows} rows for {before.num_rows} inputs")
    if not pc.all(pc.equal(before.column("sample_id"), after.column("sample_id"))).as_py():
        raise StageError(f"stage {stage!r} changed or reordered sample_ids")
    bad = pc.invert(pc.is_in(after.column("status"), pa.array([STATUS_KEPT, STATUS_FILTERED, STATUS_FAILED])))
    if pc.any(bad).as_py():
        raise StageError(f"stage {stage!r} returned a status other than kept/filtered/failed")
    unexplained = pc.and_(pc.not_equal(after.column("status"), STATUS_KEPT), pc.is_null(after.column("reason")))
    if pc.any(unexplained).as_py():
        raise StageError(f"stage {stage!r} filtered or failed a row without a reason")


def kept(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table.column("status"), STATUS_KEPT))


class FileSourceConfig(SourceConfig):
    """A source read from files named in the recipe (globs allowed, relative to the recipe)."""

    paths: list[str]

    @field_validator("paths")
    @classmethod
    def _paths_exist(cls, value: list[str], info: ValidationInfo) -> list[str]:
        base = Path((info.context or {}).get("recipe_dir", "."))
        if not value:
            raise ValueError("at least one input path is needed")
        for item in value:
            if not resolve_paths(base, [item]):
                raise ValueError(f"no input file matches {item!r} (relative to {base})")
        return value


def row_tables(rows: Iterable[dict[str, Any]], size: int) -> Iterator[pa.Table]:
    """Work tables of at most `size` rows from a stream of row dicts (sources stream files this way)."""
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield make_rows(chunk)
            chunk = []
    if chunk:
        yield make_rows(chunk)


def resolve_paths(base: Path, patterns: Sequence[str]) -> list[Path]:
    """Expand globs relative to `base`, sorted so partition numbering is stable."""
    out: list[Path] = []
    for pattern in patterns:
        p = Path(pattern).expanduser()
        p = p if p.is_absolute() else base / p
        if any(ch in pattern for ch in "*?["):
            out += sorted(q for q in p.parent.glob(p.name) if q.is_file())
        elif p.exists():
            out.append(p)
    return out
