"""The build directory's work files: atomic writes, partitions, completion markers.

Layout: DIR/work/<source>/00-<source kind>/part-FFFFF-CCCCC.parquet (file F, chunk C) with
`_done/file-FFFFF.json` listing a file's parts once all are written; each later step writes
DIR/work/<source>/NN-<stage>/<same part name>. A part file that exists is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import STATUS_KEPT, conform, empty_table, stamp_build

SECONDS_KEY = b"janus_forge.seconds"


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_part(path: Path, table: pa.Table, seconds: float = 0.0) -> None:
    """Write a work table under a temporary name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = conform(table)
    meta = dict(table.schema.metadata or {})
    meta[SECONDS_KEY] = f"{seconds:.6f}".encode()
    table = table.replace_schema_metadata(meta)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def previous_output(stage_dir: Path, part: str) -> Path:
    """Where a reopened partition's earlier output waits for its redo (pipeline/runner.py _reopen)."""
    return stage_dir / "_previous" / part


def read_kept(directory: Path, parts: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
    tables = []
    for p in parts:
        t = pq.read_table(directory / p, filters=[("status", "=", STATUS_KEPT)], columns=list(columns) if columns else None)
        tables.append(t if columns else conform(t))
    if not tables:
        return empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def _marker(read_dir: Path, index: int) -> Path:
    return read_dir / "_done" / f"file-{index:05d}.json"


def file_done(read_dir: Path, index: int) -> bool:
    return _marker(read_dir, index).exists()


def list_parts(read_dir: Path, n_files: int) -> list[str]:
    parts: list[str] = []
    for i in range(n_files):
        parts += json.loads(_marker(read_dir, i).read_text())["parts"]
    return parts


def read_file_into_parts(source, path: Path, index: int, out_dir: Path, rows_per_part: int) -> list[str]:
    """Stream one input file through the source into fixed-size parts, then mark the file done."""
    for stale in out_dir.glob(f"part-{index:05d}-*.parquet"):
        stale.unlink()  # a crash mid-file leaves parts without a marker: redo the file whole
    parts: list[str] = []
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(table: pa.Table) -> None:
        name = f"part-{index:05d}-{len(parts):05d}.parquet"
        write_part(out_dir / name, table)
        parts.append(name)

    for table in source.read(path):
        pending.append(stamp_build(conform(table), source.context.build_id))
        pending_rows += table.num_rows
        while pending_rows >= rows_per_part:
            merged = pa.concat_tables(pending, promote_options="permissive")
            flush(merged.slice(0, rows_per_part))
            rest = merged.slice(rows_per_part)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows or not parts:
        flush(pa.concat_tables(pending, promote_options="permissive") if pending else empty_table())
    write_atomic(_marker(out_dir, index), json.dumps({"file": str(path), "parts": parts}).encode())
    return parts


def seconds(files: Sequence[Path]) -> float:
    """Compute time a stage spent on its partitions (recorded in each part's metadata)."""
    total = 0.0
    for f in files:
        meta = pq.read_schema(f).metadata or {}
        total += float(meta.get(SECONDS_KEY, b"0"))
    return total


def count_rows(files: Sequence[Path]) -> int:
    return sum(pq.read_metadata(f).num_rows for f in files)
