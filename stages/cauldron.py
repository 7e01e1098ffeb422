"""the_cauldron / Docmatix Parquet (`images` list + `texts` list of user/assistant turns) -> QA rows."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from pipeline.schema import STATUS_FAILED, STATUS_FILTERED, make_rows
from stages.base import FileSourceConfig, Source, register, resolve_paths

PLACEHOLDER = "<image_placeholder>\n"


class CauldronConfig(FileSourceConfig):
    max_turns: int = Field(16, gt=0, description="longer conversations are cut to this many QA pairs")
    rows_per_batch: int = Field(256, gt=0)


@register
class Cauldron(Source):
    """One row per Parquet row; Janus takes one image per sample, so multi-image rows are filtered."""

    name = "cauldron"
    Config = CauldronConfig
    task = "understanding"

    def files(self) -> list[Path]:
        return resolve_paths(self.context.recipe_dir, self.config.paths)

    def preflight(self) -> None:
        for path in self.files():
            names = pq.read_schema(path).names
            if not {"images", "texts"} <= set(names):
                raise ValueError(f"{path}: expected columns 'images' and 'texts', found {names}")

    def read(self, path: Path) -> Iterator[pa.Table]:
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=self.config.rows_per_batch, columns=["images", "texts"]):
            rows = []
            for images, texts in zip(batch.column("images").to_pylist(), batch.column("texts").to_pylist()):
                rows.append(self._row(f"{path.name}:{n}", images or [], texts or []))
                n += 1
            yield make_rows(rows)

    def _row(self, key: str, images: list, texts: list) -> dict:
        row = {"source": self.context.source, "source_key": key, "task": self.task}
        images = [im for im in images if im and im.get("bytes")]
        turns = []
        for t in texts[: self.config.max_turns]:
            if t and isinstance(t.get("user"), str) and isinstance(t.get("assistant"), str) and t["user"].strip() and t["assistant"].strip():
                turns += [{"role": "user", "content": t["user"].strip()}, {"role": "assistant", "content": t["assistant"].strip()}]
        if not images:
            return {**row, "status": STATUS_FAILED, "reason": "no_image", "detail": f"{key}: no image bytes"}
        if len(images) > 1:
            return {**row, "status": STATUS_FILTERED, "reason": "multi_image", "detail": f"{key}: {len(images)} images"}
        if not turns:
            return {**row, "status": STATUS_FAILED, "reason": "no_turns", "detail": f"{key}: no complete user/assistant turn"}
        turns[0]["content"] = PLACEHOLDER + turns[0]["content"]
        sources = sorted({t.get("source") for t in texts if t and t.get("source")})
        return {**row, "image": {"bytes": images[0]["bytes"], "path": images[0].get("path") or f"{key}.img"},
                "conversation": turns, "meta": {"turns_in": len(texts), "sources": sources}}
