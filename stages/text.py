"""Pure-text corpora (JSONL or Parquet with a `text` column) and their length/dedup filters."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from pipeline.schema import STATUS_FAILED, STATUS_FILTERED, STATUS_KEPT
from stages.base import FileSourceConfig, Source, Stage, StageConfig, register, resolve_paths, row_tables, with_verdicts


class TextSourceConfig(FileSourceConfig):
    column: str = "text"
    id_column: str | None = None  # a stable key when the corpus has one; else file:line/row
    rows_per_table: int = Field(4096, gt=0)


@register
class TextCorpus(Source):
    """One text row per record; records without a usable text field are failed rows."""

    name = "text_corpus"
    Config = TextSourceConfig
    task = "text"

    def files(self) -> list[Path]:
        return resolve_paths(self.context.recipe_dir, self.config.paths)

    def preflight(self) -> None:
        for path in self.files():
            if path.suffix == ".parquet":
                names = pq.read_schema(path).names
                if self.config.column not in names:
                    raise ValueError(f"{path}: no column {self.config.column!r} (has {names})")

    def read(self, path: Path) -> Iterator[pa.Table]:
        records = _parquet_records(path, self.config) if path.suffix == ".parquet" else _jsonl_records(path, self.config)
        yield from row_tables((self._row(key, text, error) for key, text, error in records), self.config.rows_per_table)

    def _row(self, key: str, text: str | None, error: tuple[str, str] | None) -> dict:
        row = {"source": self.context.source, "source_key": key, "task": self.task}
        if error:
            row.update(status=STATUS_FAILED, reason=error[0], detail=error[1])
        else:
            row["text"] = text
        return row


def _jsonl_records(path: Path, cfg: TextSourceConfig) -> Iterator[tuple[str, str | None, tuple | None]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path.name}:{lineno}"
            if not raw.strip():
                continue  # blank lines are not records
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                yield where, None, ("bad_json", f"{where}: {err}")
                continue
            text = obj.get(cfg.column) if isinstance(obj, dict) else None
            key = str(obj[cfg.id_column]) if cfg.id_column and isinstance(obj, dict) and obj.get(cfg.id_column) is not None else where
            if not isinstance(text, str):
                yield key, None, ("no_text", f"{where}: field {cfg.column!r} is {type(text).__name__}, not a string")
            else:
                yield key, text, None


def _parquet_records(path: Path, cfg: TextSourceConfig) -> Iterator[tuple[str, str | None, tuple | None]]:
    cols = [cfg.column] + ([cfg.id_column] if cfg.id_column else [])
    n = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=cols):
        ids = batch.column(cfg.id_column).to_pylist() if cfg.id_column else [None] * batch.num_rows
        for text, ident in zip(batch.column(cfg.column).to_pylist(), ids):
            where = f"{path.name}:row{n}"
            n += 1
            key = str(ident) if ident is not None else where
            if not isinstance(text, str):
                yield key, None, ("no_text", f"{where}: {cfg.column!r} is null")
            else:
                yield key, text, None


class TextFilterConfig(StageConfig):
    min_chars: int = Field(20, ge=0)
    max_chars: int = Field(100_000, gt=0)
    min_words: int = Field(3, ge=0)
    dedup: bool = True  # exact duplicates after whitespace normalisation


@register
class TextFilter(Stage):
    """Length limits and exact dedup (global: the first sample_id of each text wins)."""

    name = "text_filter"
    Config = TextFilterConfig
    needs = ("text",)
    batch_size = 4096
    is_global = True

    def __init__(self, config, context):
        super().__init__(config, context)
        self.first: dict[str, str] = {}  # text digest -> sample_id that keeps it

    def plan(self, table: pa.Table) -> None:
        if self.config.dedup:
            for sid, text in zip(table.column("sample_id").to_pylist(), table.column("text").to_pylist()):
                self.first.setdefault(_digest(text), sid)

    def process(self, batch: pa.Table) -> pa.Table:
        cfg, verdicts = self.config, []
        old = zip(*(batch.column(c).to_pylist() for c in ("status", "reason", "detail")))
        for sid, text, verdict in zip(batch.column("sample_id").to_pylist(), batch.column("text").to_pylist(), old):
            if verdict[0] != STATUS_KEPT:
                verdicts.append(verdict)
            elif len(text) < cfg.min_chars or len(text.split()) < cfg.min_words:
                verdicts.append((STATUS_FILTERED, "too_short", f"{len(text)} chars, {len(text.split())} words"))
            elif len(text) > cfg.max_chars:
                verdicts.append((STATUS_FILTERED, "too_long", f"{len(text)} chars"))
            elif cfg.dedup and self.first.setdefault(_digest(text), sid) != sid:
                verdicts.append((STATUS_FILTERED, "duplicate", self.first[_digest(text)]))
            else:
                verdicts.append((STATUS_KEPT, None, None))
        return with_verdicts(batch, verdicts)


def _digest(text: str) -> str:
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
