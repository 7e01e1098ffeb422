"""The build catalog: one DuckDB file per build directory, written by the runner only.

Open it with `janus-forge catalog DIR "SQL"`, the `duckdb` CLI, or `duckdb.connect(path)`.
Counts are derived from the committed work files, so re-recording after a resume is idempotent.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import duckdb

CATALOG_FILE = "catalog.duckdb"

DDL = """
CREATE TABLE IF NOT EXISTS builds (
    id VARCHAR PRIMARY KEY, recipe_name VARCHAR, recipe_path VARCHAR, recipe VARCHAR,
    recipe_hash VARCHAR, started TIMESTAMPTZ, ended TIMESTAMPTZ, status VARCHAR,
    error VARCHAR, attempts INTEGER, versions JSON);
CREATE TABLE IF NOT EXISTS stage_runs (
    build_id VARCHAR, source VARCHAR, step INTEGER, stage VARCHAR, rows_read BIGINT,
    rows_in BIGINT, rows_kept BIGINT, rows_filtered BIGINT, rows_failed BIGINT,
    seconds DOUBLE, partitions INTEGER, status VARCHAR, recorded TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS rejections (
    build_id VARCHAR, source VARCHAR, step INTEGER, stage VARCHAR, sample_id VARCHAR, source_key VARCHAR,
    status VARCHAR, reason VARCHAR, detail VARCHAR);
-- catalogs written before rejections carried the step gain the column (at the end; inserts name columns)
ALTER TABLE rejections ADD COLUMN IF NOT EXISTS step INTEGER;
CREATE TABLE IF NOT EXISTS shards (
    build_id VARCHAR, training_stage VARCHAR, task VARCHAR, source VARCHAR, path VARCHAR,
    rows BIGINT, bytes BIGINT, sha256 VARCHAR);
CREATE TABLE IF NOT EXISTS mix_events (
    build_id VARCHAR, training_stage VARCHAR, source VARCHAR, event VARCHAR,
    position BIGINT, detail VARCHAR);
"""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Catalog:
    """Thin writer over the DuckDB file; every method is one statement or a replace-by-key."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = Path(path)
        self.con = duckdb.connect(str(self.path), read_only=read_only)
        if not read_only:
            self.con.execute(DDL)

    def close(self) -> None:
        self.con.close()

    # -- builds ------------------------------------------------------------------------
    def start_build(self, build_id: str, recipe_name: str, recipe_path: Path, recipe_text: str,
                    recipe_hash: str, versions: dict[str, str]) -> int:
        row = self.con.execute("SELECT attempts FROM builds WHERE id = ?", [build_id]).fetchone()
        attempts = (row[0] if row else 0) + 1
        self.con.execute("DELETE FROM builds WHERE id = ?", [build_id])
        self.con.execute(
            "INSERT INTO builds VALUES (?, ?, ?, ?, ?, ?, NULL, 'running', NULL, ?, ?)",
            [build_id, recipe_name, str(recipe_path), recipe_text, recipe_hash, _now(), attempts, json.dumps(versions)],
        )
        return attempts

    def finish_build(self, build_id: str, status: str, error: str | None = None) -> None:
        self.con.execute("UPDATE builds SET ended = ?, status = ?, error = ? WHERE id = ?", [_now(), status, error, build_id])

    # -- stage runs and rejections, derived from work files --------------------------------
    def record_stage(self, build_id: str, source: str, step: int, stage: str, files: Sequence[Path],
                     rows_read: int, seconds: float) -> dict[str, int]:
        """Count verdicts in a stage's committed work files and copy its rejections."""
        self.con.execute("DELETE FROM stage_runs WHERE build_id = ? AND source = ? AND stage = ? AND step = ?", [build_id, source, stage, step])
        # keyed by step: a stage used twice in one chain keeps both steps' rejections
        self.con.execute("DELETE FROM rejections WHERE build_id = ? AND source = ? AND step = ?", [build_id, source, step])
        counts = {"rows_in": 0, "rows_kept": 0, "rows_filtered": 0, "rows_failed": 0}
        if files:
            paths = [str(f) for f in files]
            row = self.con.execute(
                "SELECT count(*), count(*) FILTER (status = 'kept'), count(*) FILTER (status = 'filtered'), "
                "count(*) FILTER (status = 'failed') FROM read_parquet(?)", [paths]
            ).fetchone()
            counts = dict(zip(counts, row))
            self.con.execute(
                "INSERT INTO rejections (build_id, source, step, stage, sample_id, source_key, status, reason, detail) "
                "SELECT ?, ?, ?, ?, sample_id, source_key, status, reason, detail "
                "FROM read_parquet(?) WHERE status <> 'kept' ORDER BY sample_id", [build_id, source, step, stage, paths]
            )
        self.con.execute(
            "INSERT INTO stage_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'done', ?)",
            [build_id, source, step, stage, rows_read, counts["rows_in"], counts["rows_kept"],
             counts["rows_filtered"], counts["rows_failed"], seconds, len(files), _now()],
        )
        return counts

    # -- shards and mixing ------------------------------------------------------------------
    def record_shards(self, build_id: str, training_stage: str, rows: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        self.con.execute("DELETE FROM shards WHERE build_id = ? AND training_stage = ?", [build_id, training_stage])
        self.con.execute("DELETE FROM mix_events WHERE build_id = ? AND training_stage = ?", [build_id, training_stage])
        for r in rows:
            self.con.execute("INSERT INTO shards VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [build_id, training_stage, r["task"], r["source"], r["path"], r["rows"], r["bytes"], r["sha256"]])
        for e in events:
            self.con.execute("INSERT INTO mix_events VALUES (?, ?, ?, ?, ?, ?)",
                             [build_id, training_stage, e["source"], e["event"], e["position"], e["detail"]])

    def refresh_samples_view(self, shards_dir: Path) -> None:
        """`samples`: every training position of every stage (repeats included), its sample columns
        joined from the payload file the index points at (pipeline/mix.py), with its stage and step."""
        from pipeline.schema import SAMPLE_COLUMNS

        shards_dir = Path(shards_dir).resolve()
        if not list(shards_dir.glob("*/shard-*.parquet")):
            return
        index = str(shards_dir / "*" / "shard-*.parquet")
        root = str(shards_dir.parent)
        files = [r[0] for r in self.con.execute("SELECT DISTINCT file FROM read_parquet(?)", [index]).fetchall()]
        payload = "[" + ", ".join("'" + f"{root}/{f}".replace("'", "''") + "'" for f in sorted(files)) + "]"
        columns = ", ".join(f'p."{c}"' for c in SAMPLE_COLUMNS)
        self.con.execute(
            f"CREATE OR REPLACE VIEW samples AS SELECT regexp_extract(i.filename, '([^/]+)/[^/]+$', 1) AS training_stage, "
            f"i.step, {columns}, i.filename "
            f"FROM read_parquet('{index}', filename = true) i "
            f"JOIN read_parquet({payload}, filename = true, file_row_number = true, union_by_name = true) p "
            f"ON p.filename = '{root}/' || i.file AND p.file_row_number = i.row"
        )


def query(path: Path, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one read-only query against a catalog file."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        cur = con.execute(sql)
        return [d[0] for d in cur.description or []], cur.fetchall()
    finally:
        con.close()
