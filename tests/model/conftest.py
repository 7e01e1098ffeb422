"""Fixtures for trainer tests: a tiny Janus saved to disk and small mixed shards written directly."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pipeline.schema import make_rows, sample_id, to_shard  # noqa: E402

WORDS = ["red", "blue", "green", "square", "circle", "chart", "bar", "line", "cat", "dog"]


def png(seed: int, size: int = 40) -> bytes:
    """A small image with structure (a coloured block on a gradient), different per seed."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size + 8, 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, size + 8, dtype=np.uint8)[None, :]
    x, y = rng.integers(0, size // 2, 2)
    arr[y : y + size // 2, x : x + size // 2] = rng.integers(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def sample_rows(n: int, ratio: dict[str, int], seed: int = 0, image_tokens: list[list[int]] | None = None,
                grid: int = 4, with_image: bool = True) -> list[dict]:
    """Rows in mixed training order: each block of sum(ratio) rows follows the ratio."""
    rng = np.random.default_rng(seed)
    order = [t for t, k in ratio.items() for _ in range(k)]
    rows = []
    for i in range(n):
        task = order[i % len(order)]
        words = " ".join(rng.choice(WORDS, 3))
        row = {"task": task, "source": f"test_{task}", "source_key": f"{seed}-{i}"}
        row["sample_id"] = sample_id(row["source"], row["source_key"])
        if task == "understanding":
            row["image"] = {"bytes": png(seed * 1000 + i), "path": f"{i}.png"}
            row["conversation"] = [
                {"role": "user", "content": f"<image_placeholder>\nWhat does the chart show about {words}?"},
                {"role": "assistant", "content": f"The chart shows {words}."},
            ]
        elif task == "text":
            row["text"] = f"The quick brown fox likes {words}. A {words} is {i % 7}."
        else:
            row["prompt"] = f"a {words}"
            if with_image:
                row["image"] = {"bytes": png(seed * 1000 + i), "path": f"{i}.png"}
            if image_tokens is not None:
                row["image_tokens"] = image_tokens[i % len(image_tokens)]
                row["image_token_grid"] = [grid, grid]
        rows.append(row)
    return rows


def write_shards(build_dir: Path, stage: str, rows: list[dict], global_batch: int, ratio: dict[str, int],
                 rows_per_shard: int = 64) -> Path:
    """DIR/shards/<stage>/shard-NNNNN.parquet + _manifest.json, materialised rows as `janus-forge export` writes
    them (the mixer writes an index; model/shards.py reads both)."""
    root = build_dir / "shards" / stage
    root.mkdir(parents=True, exist_ok=True)
    table = to_shard(make_rows(rows))
    names = []
    for k, start in enumerate(range(0, table.num_rows, rows_per_shard)):
        name = f"shard-{k:05d}.parquet"
        pq.write_table(table.slice(start, rows_per_shard), root / name)
        names.append(name)
    manifest = {"training_stage": stage, "global_batch": global_batch, "ratio": ratio, "rows": table.num_rows, "shards": names}
    (root / "_manifest.json").write_text(json.dumps(manifest))
    return build_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from model.tiny import build_tiny_janus

    return build_tiny_janus(tmp_path_factory.mktemp("tiny") / "base", "tiny-random")


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> Path:
    """A build dir with shards for stages 1-3 (ratios of Table 2), no pre-computed image ids."""
    from model.tiny import PRESETS

    spec = PRESETS["tiny-random"]
    build = tmp_path_factory.mktemp("build")
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, spec.vq_codebook, spec.grid**2).astype(int).tolist() for _ in range(6)]
    for stage, ratio in {"stage1": {"understanding": 1, "text": 0, "generation": 3},
                         "stage2": {"understanding": 2, "text": 3, "generation": 5},
                         "stage3": {"understanding": 5, "text": 1, "generation": 4}}.items():
        n = 40
        write_shards(build, stage, sample_rows(n, ratio, seed=int(stage[-1]), image_tokens=tokens, grid=spec.grid), 8, ratio,
                     rows_per_shard=16)
    return build
