"""What the two dedup stages share when their plan runs distributed (pipeline/dedup_plan.py).

The plan writes its decisions to disk, one Parquet file per work partition (rows filtered, with
reason and detail; an empty file for a partition with none), so a worker applying them reads
only its partition's and the driver never holds them. No Ray in here: these are the pure pieces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import STATUS_FILTERED, STATUS_KEPT
from stages.base import StageError, with_verdicts

DECISIONS = pa.schema([("sample_id", pa.string()), ("reason", pa.string()), ("detail", pa.string())])
PLAN_DONE = "_plan.json"
# `source`: dedup within each source; `build`: one plan over every source whose chain has this
# stage with `scope: build` (they must agree on its settings), e.g. mj_prompts with yfcc_t2i.
Scope = Literal["source", "build"]


def decisions_file(plan_dir: Path, source: str, part: str) -> Path:
    return plan_dir / source / part


def splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of uint64 values (vectorised; wraps mod 2**64 by design)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def split_by(table: pa.Table, dest: np.ndarray, n: int) -> list[pa.Table]:
    """The rows of `table` for each destination 0..n-1 (stable order inside each)."""
    order = np.argsort(dest, kind="stable")
    table = table.take(pa.array(order))
    ends = np.cumsum(np.bincount(dest, minlength=n))
    starts = np.concatenate([[0], ends[:-1]])
    return [table.slice(int(s), int(e - s)) for s, e in zip(starts, ends)]


def concat(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks() if tables else schema.empty_table()


def fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """A 2-D numpy array as an Arrow column of fixed-size lists (signatures, embeddings)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def matrix(column, width: int | None, dtype) -> np.ndarray:
    """Back from a (fixed-size) list column to a 2-D array (offsets of slices respected);
    width None: every list has the same length, taken from the data."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return flat.reshape(len(column), -1) if width is None else flat.reshape(-1, width)


def write_decisions(plan_dir: Path, source: str, parts: Sequence[str], decisions: pa.Table) -> None:
    """One file per partition (source, part); columns of DECISIONS."""
    by_part = {p: [] for p in parts}
    for sid, part, reason, detail in zip(*(decisions.column(c).to_pylist() for c in ("sample_id", "part", "reason", "detail"))):
        by_part[part].append((sid, reason, detail))
    for part, rows in by_part.items():
        path = decisions_file(plan_dir, source, part)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows.sort()
        pq.write_table(pa.table([pa.array([r[i] for r in rows], pa.string()) for i in range(3)], schema=DECISIONS), path)


class PlannedDecisions:
    """Mixin for a global stage whose plan may come from disk: use_plan() then, per partition,
    open_partition() (the runner calls both) before process() applies that partition's decisions."""

    plan_dir: Path | None = None
    _part_decisions: dict[str, tuple[str, str]] | None = None

    def use_plan(self, plan_dir: Path) -> None:
        self.plan_dir, self._part_decisions = Path(plan_dir), None

    def open_partition(self, part: str) -> None:
        if self.plan_dir is None:
            return
        path = decisions_file(self.plan_dir, self.context.source, part)
        if not path.exists():
            raise StageError(f"{self.name}: the plan in {self.plan_dir} has no decisions for {self.context.source}/{part}")
        t = pq.read_table(path)
        self._part_decisions = dict(zip(t["sample_id"].to_pylist(), zip(t["reason"].to_pylist(), t["detail"].to_pylist())))

    def apply_decisions(self, batch: pa.Table) -> pa.Table:
        if self._part_decisions is None:
            raise StageError(f"{self.name}: open_partition() must run before process() when the plan is on disk")
        verdicts = []
        for sid, status, reason, detail in zip(*(batch.column(c).to_pylist() for c in ("sample_id", "status", "reason", "detail"))):
            hit = self._part_decisions.get(sid) if status == STATUS_KEPT else None
            verdicts.append((STATUS_FILTERED, *hit) if hit else (status, reason, detail))
        return with_verdicts(batch, verdicts)
