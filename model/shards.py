"""Read a build's mixed shards (DIR/shards/<stage>/) as global batches, from any row position.

Two layouts open the same way. The mixer writes an *index* (pipeline/mix.py: step, task, source,
file, row per training position) over payload files written once; `janus-forge export` and older
builds hold *materialised* rows. Either way a position resolves to (payload file, row), and a
reader takes only the rows and columns it needs from each file (pyarrow `columns=`, then `take`).

Each rank of a global batch reads the payload of its own rows only (images for understanding
rows; VQ ids and the prompt for generation rows, no image bytes unless the row has no ids or
`keep_image_bytes` is asked for), and the text columns of the others' rows: the loss
normalisers and the packed forward count are global and need only those.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.schema import TASKS, check_shard_schema

# The columns training reads; everything else (scores, lineage, meta) stays on disk.
TRAIN_COLUMNS = ["sample_id", "task", "image", "conversation", "text", "prompt", "image_tokens", "image_token_grid"]
# What a rank reads of other ranks' rows: enough to tokenise them (global loss normalisers).
TEXT_COLUMNS = ["sample_id", "task", "conversation", "text", "prompt"]
PAYLOAD_COLUMNS = {"understanding": ["image"], "text": [], "generation": ["image_tokens", "image_token_grid"]}
INDEX_COLUMNS = ["task", "file", "row"]
INDEX_KEY = b"janus_forge.index_format"  # Parquet metadata of an index shard (pipeline/mix.py)


class DataError(ValueError):
    """Training data that cannot be used as asked; the message names the directory or shard."""


def rank_rows(batch_size: int, rank: int, world: int) -> range:
    """The positions of a global batch that `rank` trains on (the loader splits the same way)."""
    per_rank = batch_size // world
    return range(rank * per_rank, (rank + 1) * per_rank)


class _ColumnCache:
    """Recently read (file, column) arrays: consecutive batches draw from the same shuffle window,
    so the same few payload files are hit again and again. Bounded by bytes."""

    def __init__(self, max_bytes: int = 256 << 20):
        self.max_bytes, self.bytes = max_bytes, 0
        self.items: OrderedDict[tuple[str, str], pa.ChunkedArray] = OrderedDict()
        self.reads = 0  # column chunks read from disk (tests check what was read)

    def get(self, path: str, column: str) -> pa.ChunkedArray:
        key = (path, column)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        col = pq.read_table(path, columns=[column]).column(column)
        self.reads += 1
        self.items[key] = col
        self.bytes += col.nbytes
        while self.bytes > self.max_bytes and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.bytes -= old.nbytes
        return col


@dataclass
class ShardSet:
    """The shards of one training stage, in training order (the mix already ordered the rows)."""

    dir: Path
    files: tuple[Path, ...]
    file_rows: tuple[int, ...]
    task_rows: dict[str, int]
    manifest: dict[str, Any]
    indexed: bool = False  # index shards (payload elsewhere) or materialised rows
    keep_image_bytes: bool = False  # generation rows also carry their image bytes
    cache: _ColumnCache = field(default_factory=_ColumnCache, repr=False)

    @property
    def rows(self) -> int:
        return sum(self.file_rows)

    @property
    def build_dir(self) -> Path:
        return self.dir.parent.parent

    @classmethod
    def open(cls, build_dir: Path, stage: str, keep_image_bytes: bool = False) -> ShardSet:
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
        indexed = INDEX_KEY in (pq.read_schema(files[0]).metadata or {}) if files[0].is_file() else False
        file_rows, task_rows = [], dict.fromkeys(TASKS, 0)
        for f in files:
            if not f.is_file():
                raise DataError(f"{manifest_path}: lists {f.name}, which does not exist")
            meta = pq.ParquetFile(f)
            if not indexed:
                check_shard_schema(meta.schema_arrow, where=str(f))
            file_rows.append(meta.metadata.num_rows)
            counts = pc.value_counts(pq.read_table(f, columns=["task"]).column("task")).to_pylist()
            for item in counts:
                task_rows[item["values"]] = task_rows.get(item["values"], 0) + item["counts"]
        return cls(dir=root, files=files, file_rows=tuple(file_rows), task_rows=task_rows, manifest=manifest,
                   indexed=indexed, keep_image_bytes=keep_image_bytes)

    def check_ratio(self, ratio: dict[str, float]) -> None:
        """Every task the recipe's ratio needs must have rows; fail before any work otherwise."""
        missing = [t for t, share in ratio.items() if share > 0 and self.task_rows.get(t, 0) == 0]
        if missing:
            have = {t: n for t, n in self.task_rows.items() if n}
            raise DataError(f"{self.dir}: the ratio needs {missing} rows but the shards have none (rows per task: {have})")

    # -- where positions live ------------------------------------------------------------------
    def index(self, start: int, stop: int) -> pa.Table:
        """(task, file, row, shard) of positions [start, stop) of one pass, file as an absolute path."""
        pieces, offset = [], 0
        for path, n in zip(self.files, self.file_rows):
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            offset += n
            if lo >= hi:
                continue
            if self.indexed:
                cols = {c: self.cache.get(str(path), c).slice(lo, hi - lo) for c in INDEX_COLUMNS}
                files = pc.binary_join_element_wise(str(self.build_dir), cols["file"], "/")
            else:  # a materialised shard is its own payload file
                cols = {"task": self.cache.get(str(path), "task").slice(lo, hi - lo), "row": pa.array(np.arange(lo, hi))}
                files = pa.array([str(path)] * (hi - lo))
            pieces.append(pa.table({"task": cols["task"], "file": files, "row": cols["row"], "shard": [path.name] * (hi - lo)}))
        return pa.concat_tables(pieces)

    def read(self, index: pa.Table, payload: np.ndarray | None = None) -> list[dict[str, Any]]:
        """Rows of `index`, in its order. Rows where `payload` is True get their task's payload
        columns; the others only TEXT_COLUMNS (None elsewhere)."""
        n = index.num_rows
        payload = np.ones(n, dtype=bool) if payload is None else payload
        tasks = index.column("task").to_pylist()
        files = index.column("file").to_pylist()
        rows_at = index.column("row").to_numpy()
        out: list[dict[str, Any]] = [dict.fromkeys(TRAIN_COLUMNS) for _ in range(n)]
        by_file: dict[str, list[int]] = {}
        for i, f in enumerate(files):
            by_file.setdefault(f, []).append(i)
        for f, positions in by_file.items():
            pos = np.array(positions)
            self._fill(out, f, pos, rows_at[pos], TEXT_COLUMNS)
            for task, extra in PAYLOAD_COLUMNS.items():
                mine = pos[[payload[i] and tasks[i] == task for i in positions]]
                if len(mine) and extra:
                    self._fill(out, f, mine, rows_at[mine], extra)
            # generation rows carry no image bytes unless they lack VQ ids (encoded on the fly) or bytes are asked for
            gen = [i for i in positions if payload[i] and tasks[i] == "generation"
                   and (self.keep_image_bytes or out[i]["image_tokens"] is None)]
            if gen:
                self._fill(out, f, np.array(gen), rows_at[gen], ["image"])
        shards = index.column("shard").to_pylist()
        for row, shard in zip(out, shards):
            row["shard"] = shard
        return out

    def _fill(self, out: list[dict], path: str, positions: np.ndarray, rows: np.ndarray, columns: list[str]) -> None:
        take = pa.array(rows)
        for c in columns:
            for p, v in zip(positions, self.cache.get(path, c).take(take).to_pylist()):
                out[p][c] = v

    # -- training order --------------------------------------------------------------------------
    def batches(self, batch_size: int, start_step: int = 0, rank: int = 0, world: int = 1) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """Yield (global_row_index_of_first_row, rows) for each step from `start_step`, wrapping
        epochs. Rows of `rank`'s share (`rank_rows`) carry their payload; the rest, text only."""
        mine = np.zeros(batch_size, dtype=bool)
        mine[list(rank_rows(batch_size, rank, world))] = True
        first = start_step * batch_size
        while True:
            yield first, self.read(self._positions(first, first + batch_size), mine)
            first += batch_size

    def _positions(self, start: int, stop: int) -> pa.Table:
        """Index of global positions [start, stop), wrapping to row 0 at each epoch's end."""
        pieces = []
        while start < stop:
            offset = start % self.rows
            take = min(stop - start, self.rows - offset)
            pieces.append(self.index(offset, offset + take))
            start += take
        return pa.concat_tables(pieces)

    def iter_rows(self, offset: int = 0, chunk: int = 256) -> Iterator[dict[str, Any]]:
        for start in range(offset, self.rows, chunk):
            yield from self.read(self.index(start, min(start + chunk, self.rows)))

    def tail(self, task: str, n: int, skip_rows: int) -> tuple[list[dict[str, Any]], bool]:
        """Up to n rows of `task` after the first `skip_rows` rows (held out: training never read
        them); when training read every row, the last ones of the task, flagged as seen."""
        if skip_rows < self.rows:
            held = list(islice((r for r in self.iter_rows(skip_rows) if r["task"] == task), n))
            if held:
                return held, True
        window = max(0, self.rows - 64 * n)  # the task's last rows sit near the end of a mixed build
        seen = [r for r in self.iter_rows(window) if r["task"] == task]
        return seen[-n:], False
