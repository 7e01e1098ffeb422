"""The build directory's work files: atomic writes, partitions, completion markers.

Layout: DIR/work/<source>/00-<source kind>/part-FFFFF-CCCCC.parquet (file F, chunk C) with
`_done/file-FFFFF.json` listing a file's parts once all are written; each later step writes
DIR/work/<source>/NN-<stage>/<same part name>. Every part file is committed by a marker,
`_done/<part name>.json`, written after the part and holding its size and BLAKE2b hash: a part
is done when its marker exists, and a rerun checks every part against its marker (`verify_parts`)
so a file truncated or damaged after its commit is found, logged and redone rather than resumed.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import STATUS_KEPT, conform, empty_table, stamp_build

log = logging.getLogger("janus_forge.build")

SECONDS_KEY = b"janus_forge.seconds"
# Fault injection for tests (tests/pipeline/test_crash_points.py): a write to a file whose path
# matches this glob stops half way with ENOSPC, as a full disk does. Unset in every real run.
FAULT_ENOSPC_ENV = "JANUS_FORGE_FAULT_ENOSPC"


class DiskFullError(OSError):
    """A work file could not be written for lack of space; nothing half-written is left behind."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name, fsync, rename: a file that exists under its name is whole.

    On any write error the temporary file is removed, so a failed write leaves nothing behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            _write_all(f, data, path)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(err.errno, f"no space left on device while writing {path} ({len(data)} bytes); "
                                "the partial file was removed: free space and rerun, committed work is kept") from err
        raise


def _write_all(f, data: bytes, path: Path) -> None:
    pattern = os.environ.get(FAULT_ENOSPC_ENV)
    if pattern and fnmatch.fnmatch(str(path), pattern):
        f.write(data[: len(data) // 2])  # a real partial file, as a disk filling up mid-write leaves
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected by {FAULT_ENOSPC_ENV})")
    f.write(data)


def write_part(path: Path, table: pa.Table, seconds: float = 0.0) -> None:
    """Write a work table atomically, then its completion marker (size and hash of the bytes)."""
    table = conform(table)
    meta = dict(table.schema.metadata or {})
    meta[SECONDS_KEY] = f"{seconds:.6f}".encode()
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    uncommit(path)  # a redo replaces a part: never leave the old marker over the new bytes
    write_atomic(path, data)
    write_atomic(_part_marker(path), json.dumps({"bytes": len(data), "blake2b": hashlib.blake2b(data).hexdigest()}).encode())


def _part_marker(path: Path) -> Path:
    return path.parent / "_done" / f"{path.name}.json"


def committed(path: Path) -> bool:
    """Cheap: has this part been committed? (Its content is checked once per run by verify_parts.)"""
    return _part_marker(path).exists()


def uncommit(path: Path, keep_as: Path | None = None) -> None:
    """Remove a part's commit: the marker, then the part; or move the part to `keep_as` first (a
    crash in between leaves a marker without its part, which verify_parts drops; the kept copy is
    found again, so nothing it holds is lost)."""
    if keep_as is not None:
        keep_as.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, keep_as)
    _part_marker(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def damage(path: Path) -> str | None:
    """Why a committed part no longer matches its marker (None: it does)."""
    marker = json.loads(_part_marker(path).read_text())
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "the file is missing"
    if size != marker["bytes"]:
        return f"{size} bytes, committed as {marker['bytes']}"
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "blake2b").hexdigest()
    if digest != marker["blake2b"]:
        return "its BLAKE2b hash differs from the committed one"
    return None


def verify_parts(dirs: Sequence[Path], parts: Sequence[str], is_global: Sequence[bool] = ()) -> list[str]:
    """Uncommit every committed part whose file does not match its marker, and what was built on
    it: the same part in later steps, every part of a later global step (`is_global`, parallel to
    `dirs`: its plan saw them all, as in runner._reopen). Returns the names found damaged. Hashing
    reads each committed part once per run, in threads (hashlib releases the GIL)."""
    paths = [d / p for d in dirs for p in parts if committed(d / p)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = dict(zip(paths, pool.map(damage, paths)))
    bad: list[str] = []
    for k, d in enumerate(dirs):
        for p in parts:
            why = problems.get(d / p)
            if why is None or p in bad:
                continue
            log.warning("%s does not match its completion marker (%s): redoing that partition", d / p, why)
            bad.append(p)
            every = False
            for j in range(k, len(dirs)):
                every = every or (j > k and j < len(is_global) and is_global[j])
                for q in parts if every else [p]:
                    uncommit(dirs[j] / q)
    return bad


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
    """The file's marker exists and each part it lists is committed and matches its own marker."""
    marker = _marker(read_dir, index)
    if not marker.exists():
        return False
    parts = json.loads(marker.read_text())["parts"]
    if all(committed(read_dir / p) for p in parts) and not verify_parts([read_dir], parts):
        return True
    log.warning("%s: a part of input file %d is missing or damaged: reading the file again", read_dir, index)
    marker.unlink()
    return False


def list_parts(read_dir: Path, n_files: int) -> list[str]:
    parts: list[str] = []
    for i in range(n_files):
        parts += json.loads(_marker(read_dir, i).read_text())["parts"]
    return parts


def read_file_into_parts(source, path: Path, index: int, out_dir: Path, rows_per_part: int) -> list[str]:
    """Stream one input file through the source into fixed-size parts, then mark the file done."""
    for stale in out_dir.glob(f"part-{index:05d}-*.parquet"):
        uncommit(stale)  # a crash mid-file leaves parts without a file marker: redo the file whole
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
