"""Read a build's mixed shards (DIR/shards/<stage>/) as global batches, from any row position."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from itertools import islice
from typing import Any, Iterator

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.schema import TASKS, check_shard_schema

# The columns training reads; everything else (scores, lineage, meta) stays on disk.
TRAIN_COLUMNS = ["sample_id", "task", "image", "conversation", "text", "prompt", "image_tokens", "image_token_grid"]


class DataError(ValueError):
    """Training data that cannot be used as asked; the message names the directory or shard."""


@dataclass(frozen=True)
class ShardSet:
    """The shards of one training stage, in training order (the mix already ordered the rows)."""

    dir: Path
    files: tuple[Path, ...]
    file_rows: tuple[int, ...]
    task_rows: dict[str, int]
    manifest: dict[str, Any]

    @property
    def rows(self) -> int:
        return sum(self.file_rows)

    @classmethod
    def open(cls, build_dir: Path, stage: str) -> ShardSet:
        root = Path(build_dir) / "shards" / stage
        if not root.is_dir():
            raise DataError(f"{root}: no shards for training stage {stage!r} (is {build_dir} a build directory?)")
        manifest_path = root / "_manifest.json"
        manifest: dict[str, Any] = {}
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except json.JSONDecodeError as err:
                raise DataError(f"{manifest_path}: not valid JSON: {err}") from None
        names = manifest.get("shards") or sorted(p.name for p in root.glob("shard-*.parquet"))
        files = tuple(root / Path(n).name for n in names)
        if not files:
            raise DataError(f"{root}: no shard-*.parquet files")
        file_rows, task_rows = [], dict.fromkeys(TASKS, 0)
        for f in files:
            if not f.is_file():
                raise DataError(f"{manifest_path}: lists {f.name}, which does not exist")
            meta = pq.ParquetFile(f)
            check_shard_schema(meta.schema_arrow, where=str(f))
            file_rows.append(meta.metadata.num_rows)
            counts = pc.value_counts(pq.read_table(f, columns=["task"]).column("task")).to_pylist()
            for item in counts:
                task_rows[item["values"]] = task_rows.get(item["values"], 0) + item["counts"]
        return cls(dir=root, files=files, file_rows=tuple(file_rows), task_rows=task_rows, manifest=manifest)

    def check_ratio(self, ratio: dict[str, float]) -> None:
        """Every task the recipe's ratio needs must have rows; fail before any work otherwise."""
        missing = [t for t, share in ratio.items() if share > 0 and self.task_rows.get(t, 0) == 0]
        if missing:
            have = {t: n for t, n in self.task_rows.items() if n}
            raise DataError(f"{self.dir}: the ratio needs {missing} rows but the shards have none (rows per task: {have})")

    def batches(self, batch_size: int, start_step: int = 0) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Yield (global_row_index_of_first_row, rows) for each step from `start_step`, wrapping epochs."""
        position = start_step * batch_size
        pending: list[dict[str, Any]] = []
        first = position
        while True:
            for row in self._rows_from(position % self.rows):
                pending.append(row)
                if len(pending) == batch_size:
                    yield first, pending
                    first += batch_size
                    pending = []
            position = (position // self.rows + 1) * self.rows  # next epoch starts at row 0

    def _rows_from(self, offset: int) -> Iterator[dict[str, Any]]:
        for path, n in zip(self.files, self.file_rows):
            if offset >= n:
                offset -= n
                continue
            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(batch_size=256, columns=TRAIN_COLUMNS):
                if offset >= batch.num_rows:
                    offset -= batch.num_rows
                    continue
                rows = batch.slice(offset).to_pylist()
                offset = 0
                for row in rows:
                    row["shard"] = path.name
                    yield row

    def tail(self, task: str, n: int, skip_rows: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to n rows of `task` after the first `skip_rows` rows (held out: training never read
        them); when training read every row, the last ones of the task, flagged as seen."""
        if skip_rows < self.rows:
            held = list(islice((r for r in self._rows_from(skip_rows) if r["task"] == task), n))
            if held:
                return held, True
        window = max(0, self.rows - 64 * n)  # the task's last rows sit near the end of a mixed build
        seen = [r for r in self._rows_from(window) if r["task"] == task]
        return seen[-n:], False
