"""Source `midjourney_prompts`: text-to-image prompts streamed from Parquet, JSONL or CSV files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import field_validator

from pipeline.schema import STATUS_FAILED
from stages.base import FileSourceConfig, Source, StageError, register, resolve_paths, row_tables

ROWS_PER_TABLE = 2048
# JSON has no header: preflight looks at this many parseable records for the column.
PREFLIGHT_RECORDS = 200
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}


class MidjourneyPromptsConfig(FileSourceConfig):
    column: str = "prompt"
    # A stable id column in the file; without it a row is keyed by its line/row number.
    key_column: str | None = None

    @field_validator("paths")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        for item in value:
            if Path(item).suffix.lower() not in FORMATS:
                raise ValueError(f"{item!r}: prompt files must end in one of {sorted(FORMATS)}")
        return value


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise StageError(f"{path}: unknown prompt file type; expected one of {sorted(FORMATS)}")
    return fmt


@register
class MidjourneyPrompts(Source):
    """One row per record; the raw prompt text as written (cleaning is the next stage's job)."""

    name = "midjourney_prompts"
    Config = MidjourneyPromptsConfig
    task = "generation"

    def files(self) -> list[Path]:
        return resolve_paths(self.context.recipe_dir, self.config.paths)

    def preflight(self) -> None:
        files = self.files()
        if not files:
            raise StageError(f"source {self.context.source!r}: no files match {self.config.paths}")
        names = [self._file_key(p) for p in files]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise StageError(f"source {self.context.source!r}: files {twice} are matched more than once; row keys would repeat")
        wanted = [c for c in (self.config.column, self.config.key_column) if c]
        for path in files:
            columns = _columns(path)
            if columns is None:  # no record parsed: the reader turns every line into a failed row
                continue
            for col in wanted:
                if col not in columns:
                    raise StageError(
                        f"{path}: no column {col!r} (source {self.context.source!r}); "
                        f"the file has columns {sorted(columns)}; set `column:` / `key_column:` in the recipe"
                    )

    def _file_key(self, path: Path) -> str:
        """The file's part of every source_key: its path below the recipe dir, else its name."""
        try:
            return path.resolve().relative_to(Path(self.context.recipe_dir).resolve()).as_posix()
        except ValueError:
            return path.name

    def read(self, path: Path) -> Iterator[pa.Table]:
        records = {"parquet": _parquet_records, "jsonl": _jsonl_records, "csv": _csv_records}[_format(path)]
        seen_keys: set[str] = set()
        name = self._file_key(path)
        rows = (self._row(name, line, record, error, seen_keys)
                for line, record, error in records(path, self.config.column, self.config.key_column))
        yield from row_tables(rows, ROWS_PER_TABLE)

    def _row(self, name: str, line: int, record: dict | None, error: tuple[str, str] | None, seen_keys: set[str]) -> dict[str, Any]:
        """A work row; a record that cannot be read becomes a failed row naming file and line."""
        key = f"{name}:{line}"
        meta: dict[str, Any] = {"file": name, "line": line}
        prompt = None
        if error is None:
            prompt, key_value = record.get(self.config.column), None
            if self.config.key_column:
                key_value = record.get(self.config.key_column)
                if key_value is None or key_value == "":
                    error = ("missing_key", f"no value in key column {self.config.key_column!r}")
                else:
                    key_value = str(key_value)
                    if key_value in seen_keys:
                        error = ("duplicate_key", f"{self.config.key_column}={key_value!r} repeats an earlier row")
                    else:
                        seen_keys.add(key_value)
                        # `col=value` cannot collide with the numeric line keys failed rows use
                        key = f"{name}:{self.config.key_column}={key_value}"
                        meta["key"] = key_value
            if error is None:
                error = _check_prompt(self.config.column, prompt)
        row: dict[str, Any] = {
            "task": self.task, "source": self.context.source, "source_key": key, "meta": meta,
            "lineage": {"build_id": self.context.build_id, "parent_ids": [], "generator": self.name},
        }
        if error is None:
            row["prompt"] = prompt
        else:
            row.update(status=STATUS_FAILED, reason=error[0], detail=f"{name}:{line}: {error[1]}"[:1000])
        return row


def _check_prompt(column: str, value: Any) -> tuple[str, str] | None:
    if value is None:
        return ("missing_prompt", f"no value in column {column!r}")
    if not isinstance(value, str):
        return ("not_a_string", f"column {column!r} holds {type(value).__name__} {str(value)[:80]!r}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # a JSON "\ud800" escape decodes to a lone surrogate
        return ("invalid_utf8", f"column {column!r}: {err.reason} at character {err.start}")
    return None


# Each reader yields (line, record, error): record is a dict of the wanted columns, or None
# with error = (reason, problem) when the line could not be read.
Record = tuple[int, "dict | None", "tuple[str, str] | None"]


def _parquet_records(path: Path, column: str, key_column: str | None) -> Iterator[Record]:
    wanted = [c for c in (column, key_column) if c]
    line = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_TABLE, columns=wanted):
        for record in batch.to_pylist():
            line += 1  # 1-based row number, like the text formats' line numbers
            yield line, record, None


def _jsonl_records(path: Path, column: str, key_column: str | None) -> Iterator[Record]:
    with open(path, "rb") as fh:
        for line, raw in enumerate(fh, start=1):
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # UTF-8 byte-order mark
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield line, None, ("invalid_utf8", f"invalid UTF-8 byte 0x{raw[err.start]:02x} at byte {err.start}")
                continue
            if not text.strip():
                yield line, None, ("empty_line", "blank line")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                yield line, None, ("bad_json", f"{err.msg} (column {err.colno}): {text.strip()[:80]!r}")
                continue
            if not isinstance(record, dict):
                yield line, None, ("bad_json", f"expected a JSON object, got {type(record).__name__}")
                continue
            yield line, record, None


def _csv_records(path: Path, column: str, key_column: str | None) -> Iterator[Record]:
    with open(path, "rb") as fh:
        # surrogateescape keeps undecodable bytes visible so one bad line fails, not the file
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        header = next(reader, None) or []
        index = {name: i for i, name in enumerate(header)}
        start = reader.line_num + 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as err:  # e.g. a field over csv.field_size_limit(): fail the record
                line, start = start, reader.line_num + 1
                yield line, None, ("bad_csv", str(err))
                continue
            line, start = start, reader.line_num + 1  # a quoted field may span several lines
            if not fields or not any(f.strip() for f in fields):
                yield line, None, ("empty_line", "blank line")
                continue
            bad = next((f for f in fields if _has_surrogates(f)), None)
            if bad is not None:
                pos = next(i for i, ch in enumerate(bad) if "\udc80" <= ch <= "\udcff")
                yield line, None, ("invalid_utf8", f"invalid UTF-8 byte 0x{ord(bad[pos]) - 0xDC00:02x} in a field")
                continue
            if len(fields) != len(header):
                yield line, None, ("bad_csv", f"{len(fields)} fields, the header has {len(header)}")
                continue
            yield line, {name: fields[index[name]] for name in (column, key_column) if name}, None


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _columns(path: Path) -> set[str] | None:
    """Column names a file offers (JSON: keys seen in its first records; None if none parse)."""
    fmt = _format(path)
    try:
        if fmt == "parquet":
            return set(pq.read_schema(path).names)
        if fmt == "csv":
            with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
                return set(next(csv.reader(fh), []))
        keys: set[str] = set()
        parsed = 0
        with open(path, "rb") as fh:
            if fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
                raise StageError(f"{path}: a JSON array; prompt files must be JSON Lines (one object per line)")
            fh.seek(0)
            for raw in fh:
                try:
                    record = json.loads(raw)
                except ValueError:  # bad lines become failed rows when read; skip them here
                    continue
                if isinstance(record, dict):
                    keys |= record.keys()
                    parsed += 1
                if parsed >= PREFLIGHT_RECORDS:
                    break
        return keys if parsed else None
    except (OSError, pa.ArrowException) as err:
        raise StageError(f"{path}: cannot read: {err}") from None
