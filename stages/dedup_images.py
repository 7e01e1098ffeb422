"""Build-wide image dedup: exact (decoded-pixel hash) and near (CLIP embedding cosine), keep one."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, PositiveInt

from pipeline.schema import STATUS_FILTERED, STATUS_KEPT
from stages.base import Stage, StageConfig, register, with_verdicts


class DedupImagesConfig(StageConfig):
    stage: Literal["dedup_images"] = "dedup_images"
    # ViT-L/14 cosine >= 0.95 is SemDeDup-style "same picture, re-rendered or re-encoded".
    near_threshold: float = Field(0.95, gt=0.0, le=1.0)
    block_rows: PositiveInt = Field(4096, description="embeddings compared per matrix product")


@register
class DedupImages(Stage):
    """Global: plan() sees every kept row's hash and embedding, process() applies the verdicts.

    Order of preference: higher aesthetic score first, then sample_id, so the copy kept is the
    best-scored one and the choice does not depend on partitioning.
    """

    name = "dedup_images"
    Config = DedupImagesConfig
    needs = ("pixel_hash", "clip_embedding", "scores")  # work-only fields from score_images
    is_global = True

    def __init__(self, config: DedupImagesConfig, context):
        super().__init__(config, context)
        self.duplicates: dict[str, tuple[str, str, str]] = {}  # sample_id -> (reason, of, detail)

    def plan(self, table: pa.Table) -> None:
        rows = table.select(["sample_id", *self.needs]).to_pylist()
        rows.sort(key=lambda r: (-((r["scores"] or {}).get("aesthetic") or float("-inf")), r["sample_id"]))
        self.duplicates = {}
        first: dict[str, str] = {}
        unique = []
        for r in rows:
            h = r["pixel_hash"]
            if h is not None and h in first:
                self.duplicates[r["sample_id"]] = ("exact_duplicate", first[h], "same decoded pixels")
                continue
            if h is not None:
                first[h] = r["sample_id"]
            unique.append(r)
        self._near(unique)

    def _near(self, rows: list[dict]) -> None:
        """Greedy: a row is a near-duplicate of the first better-ranked kept row it is close to."""
        rows = [r for r in rows if r["clip_embedding"]]
        if not rows:
            return
        emb = np.asarray([r["clip_embedding"] for r in rows], np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
        thr, kept_idx = self.config.near_threshold, np.empty(0, np.int64)
        for start in range(0, len(rows), self.config.block_rows):
            block = emb[start : start + self.config.block_rows]
            vs_kept = block @ emb[kept_idx].T if kept_idx.size else np.zeros((len(block), 0), np.float32)
            inner = block @ block.T
            new_kept: list[int] = []
            for j in range(len(block)):
                sims = np.concatenate([vs_kept[j], inner[j, new_kept]])
                if sims.size and sims.max() >= thr:
                    k = int(sims.argmax())
                    of = int(kept_idx[k]) if k < kept_idx.size else start + new_kept[k - kept_idx.size]
                    self.duplicates[rows[start + j]["sample_id"]] = ("near_duplicate", rows[of]["sample_id"], f"cosine {sims.max():.4f}")
                else:
                    new_kept.append(j)
            kept_idx = np.concatenate([kept_idx, start + np.asarray(new_kept, np.int64)])

    def process(self, batch: pa.Table) -> pa.Table:
        verdicts = []
        for sid, status, reason, detail in zip(*(batch.column(c).to_pylist() for c in ("sample_id", "status", "reason", "detail"))):
            dup = self.duplicates.get(sid) if status == STATUS_KEPT else None
            if dup:
                verdicts.append((STATUS_FILTERED, dup[0], f"duplicate of {dup[1]} ({dup[2]})"))
            else:
                verdicts.append((status, reason, detail))
        return with_verdicts(batch, verdicts)
