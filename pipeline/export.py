"""`janus-forge export`: a training stage's index → self-contained Parquet in training order.

The build's shards are an index over payload files (pipeline/mix.py); tools that want rows
(`datasets.load_dataset("parquet", data_files=...)`, DuckDB, a copy to another cluster) get them
here: every sample column (SAMPLE_SCHEMA, `image` as `datasets.Image`), one row per training
position, repeats written out. Generation rows that carry VQ ids drop their image bytes unless
`keep_image_bytes` (for looking at them); the ids are what training reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model.shards import ShardSet
from pipeline.schema import SAMPLE_COLUMNS, to_shard
from pipeline.workdir import write_atomic


def export_stage(build_dir: Path, stage: str, out_dir: Path, rows_per_file: int = 4096, keep_image_bytes: bool = False) -> list[Path]:
    shards = ShardSet.open(build_dir, stage)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for k, start in enumerate(range(0, shards.rows, rows_per_file)):
        index = shards.index(start, min(start + rows_per_file, shards.rows))
        table = _materialise(index, keep_image_bytes)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, use_dictionary=["task", "source"])
        path = out_dir / f"part-{k:05d}.parquet"
        write_atomic(path, buf.getvalue().to_pybytes())
        written.append(path)
    write_atomic(out_dir / "_export.json", json.dumps({"build": str(build_dir), "stage": stage, "rows": shards.rows,
                                                       "files": [p.name for p in written], "keep_image_bytes": keep_image_bytes}, indent=2).encode())
    return written


def _materialise(index: pa.Table, keep_image_bytes: bool) -> pa.Table:
    """Rows of `index` in its order: one read per payload file (its rows, sample columns only)."""
    files = index.column("file").to_pylist()
    rows = index.column("row").to_numpy()
    pieces, order = [], []
    for f in dict.fromkeys(files):
        at = np.nonzero(np.array(files, dtype=object) == f)[0]
        present = pq.read_schema(f).names
        table = pq.read_table(f, columns=[c for c in SAMPLE_COLUMNS if c in present])
        pieces.append(to_shard(table.take(pa.array(rows[at]))))
        order.append(at)
    table = pa.concat_tables(pieces)
    where = np.empty(len(files), dtype=np.int64)
    where[np.concatenate(order)] = np.arange(len(files))
    table = table.take(pa.array(where))  # back to training order
    if not keep_image_bytes:
        drop = pc.and_(pc.equal(table.column("task"), "generation"), pc.is_valid(table.column("image_tokens")))
        image = pc.if_else(drop, pa.scalar(None, table.schema.field("image").type), table.column("image"))
        table = table.set_column(table.schema.get_field_index("image"), table.schema.field("image"), image)
    return table.select(list(SAMPLE_COLUMNS))
