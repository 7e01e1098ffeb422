"""The one Arrow schema every shard row follows, and the helpers that build rows for it.

Versioned: readers check `SCHEMA_VERSION` in the Parquet metadata. Bump it when a field is
added, removed or changes meaning, and note it in README's "Sample schema" section.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Iterable

import pyarrow as pa

SCHEMA_VERSION = 1
TASKS = ("understanding", "text", "generation")

# Hugging Face `datasets.Image` is stored as struct<bytes, path>; keeping that layout means
# `load_dataset("parquet", ...)` decodes the column as images with no extra code.
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TURN_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCORES_TYPE = pa.struct(
    [
        ("aesthetic", pa.float32()),  # LAION aesthetic predictor v2, 1-10 scale
        ("clip_similarity", pa.float32()),  # cosine(image embedding, text embedding)
    ]
)
LINEAGE_TYPE = pa.struct(
    [
        ("build_id", pa.string()),
        ("parent_ids", pa.list_(pa.string())),
        ("generator", pa.string()),  # e.g. "janus:/models/janus-pro-1b@rev" or "chart_renderer"
        ("seed", pa.int64()),
        ("params", pa.string()),  # JSON: sampling parameters, chart type, template ...
    ]
)

SAMPLE_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),  # 128-bit hex, see sample_id()
    pa.field("task", pa.string(), nullable=False),  # one of TASKS
    pa.field("source", pa.string(), nullable=False),  # the recipe's source name
    pa.field("source_key", pa.string(), nullable=False),  # the row's key inside its source
    pa.field("image", IMAGE_TYPE),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("conversation", pa.list_(TURN_TYPE)),  # understanding: user/assistant turns
    pa.field("text", pa.string()),  # pure-text task
    pa.field("prompt", pa.string()),  # generation: the prompt or caption
    pa.field("image_tokens", pa.list_(pa.int32())),  # generation: VQ ids, row-major
    pa.field("image_token_grid", pa.list_(pa.int32())),  # [rows, cols] of image_tokens
    pa.field("scores", SCORES_TYPE),
    pa.field("meta", pa.string()),  # JSON: source-specific fields (license, url, ...)
    pa.field("lineage", LINEAGE_TYPE),
]
SAMPLE_SCHEMA = pa.schema(SAMPLE_FIELDS, metadata={"janus_forge.schema_version": str(SCHEMA_VERSION)})
SAMPLE_COLUMNS = tuple(SAMPLE_SCHEMA.names)

# Work files (DIR/work/<stage>/) carry every row a stage saw, with its verdict.
STATUS_KEPT, STATUS_FILTERED, STATUS_FAILED = "kept", "filtered", "failed"
STATUS_FIELDS = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("reason", pa.string()),  # short machine-readable reason, e.g. "too_short"
    pa.field("detail", pa.string()),  # human detail: the error, the id it duplicates, scores
]
STATUS_COLUMNS = tuple(f.name for f in STATUS_FIELDS)


def sample_id(source: str, key: str) -> str:
    """Deterministic 128-bit id from the source name and the row's key in that source."""
    return hashlib.sha256(f"{source}\x00{key}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


def empty_table(extra: Iterable[pa.Field] = ()) -> pa.Table:
    return pa.schema(SAMPLE_FIELDS + STATUS_FIELDS + list(extra)).empty_table()


def make_rows(rows: list[dict[str, Any]], extra: Iterable[pa.Field] = ()) -> pa.Table:
    """Build a work table from dicts; absent sample fields are null, status defaults to kept."""
    schema = pa.schema(SAMPLE_FIELDS + STATUS_FIELDS + list(extra))
    filled = []
    for row in rows:
        row = dict(row)
        row.setdefault("status", STATUS_KEPT)
        if "sample_id" not in row:
            row["sample_id"] = sample_id(row["source"], row["source_key"])
        for name in ("meta",):
            if isinstance(row.get(name), dict):
                row[name] = json.dumps(row[name], sort_keys=True, ensure_ascii=False)
        lineage = row.get("lineage")
        if isinstance(lineage, dict) and isinstance(lineage.get("params"), dict):
            row["lineage"] = {**lineage, "params": json.dumps(lineage["params"], sort_keys=True)}
        filled.append(row)
    return pa.Table.from_pylist(filled, schema=schema)


def conform(table: pa.Table, keep_extra: bool = True) -> pa.Table:
    """Order and type a table as the work schema; missing sample/status columns become null.

    Extra columns (e.g. an embedding a later stage needs) are kept after the known ones
    unless keep_extra is False.
    """
    known = SAMPLE_FIELDS + STATUS_FIELDS
    columns, fields = [], []
    for field in known:
        if field.name in table.column_names:
            col = table.column(field.name)
            if col.type != field.type:
                col = col.cast(field.type)
            columns.append(col)
        elif field.name == "status":
            columns.append(pa.array([STATUS_KEPT] * table.num_rows, pa.string()))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
        fields.append(field)
    if keep_extra:
        for name in table.column_names:
            if name not in SAMPLE_SCHEMA.names and name not in STATUS_COLUMNS:
                columns.append(table.column(name))
                fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _hf_feature(t: pa.DataType) -> dict:
    """The Hugging Face `datasets` feature JSON for an Arrow type (Value, List, struct dict)."""
    if pa.types.is_struct(t):
        return {t.field(i).name: _hf_feature(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t):
        return {"feature": _hf_feature(t.value_type), "_type": "List"}
    dtype = {pa.string(): "string", pa.binary(): "binary", pa.float32(): "float32"}.get(t, str(t))
    return {"dtype": dtype, "_type": "Value"}


@functools.lru_cache(maxsize=1)
def shard_schema() -> pa.Schema:
    """SAMPLE_SCHEMA plus the `huggingface` metadata that makes `image` decode as datasets.Image.

    Written here rather than through `datasets.Features` so that shard writing (and every Ray
    worker) does not pay the import of `datasets`; a test checks both agree.
    """
    features = {f.name: _hf_feature(f.type) for f in SAMPLE_FIELDS}
    features["image"] = {"_type": "Image"}
    meta = dict(SAMPLE_SCHEMA.metadata)
    meta[b"huggingface"] = json.dumps({"info": {"features": features}}).encode()
    return SAMPLE_SCHEMA.with_metadata(meta)


def to_shard(table: pa.Table) -> pa.Table:
    """Strip work-only columns: what remains is exactly SAMPLE_SCHEMA (with its version)."""
    return conform(table, keep_extra=False).select(list(SAMPLE_COLUMNS)).cast(shard_schema())


def check_shard_schema(schema: pa.Schema, where: str = "shard") -> None:
    """Raise a clear error when a Parquet file was not written with this schema version."""
    version = (schema.metadata or {}).get(b"janus_forge.schema_version")
    if version is None or int(version) != SCHEMA_VERSION:
        found = version.decode() if version else "none"
        raise ValueError(f"{where}: sample schema version {found}, this janus-forge reads {SCHEMA_VERSION}")
    missing = [n for n in SAMPLE_COLUMNS if n not in schema.names]
    if missing:
        raise ValueError(f"{where}: missing sample columns {missing}")


def stamp_build(table: pa.Table, build_id: str) -> pa.Table:
    """Set lineage.build_id on rows whose source left it empty (other lineage fields are kept)."""
    lineage = [dict(x or {}) for x in table.column("lineage").to_pylist()]
    for row in lineage:
        row["build_id"] = row.get("build_id") or build_id
        row.setdefault("parent_ids", None)
    idx = table.schema.get_field_index("lineage")
    return table.set_column(idx, "lineage", pa.array(lineage, LINEAGE_TYPE))
