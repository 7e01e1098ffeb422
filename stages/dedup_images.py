"""Build-wide image dedup: exact (decoded-pixel hash) and near (CLIP embedding cosine), keep one."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, PositiveInt

from pipeline.schema import STATUS_FILTERED, STATUS_KEPT
from stages.base import Stage, StageConfig, register, with_verdicts
from stages.dedup_shared import PlannedDecisions, Scope


class DedupImagesConfig(StageConfig):
    stage: Literal["dedup_images"] = "dedup_images"
    # ViT-L/14 cosine >= 0.95 is SemDeDup-style "same picture, re-rendered or re-encoded".
    near_threshold: float = Field(0.95, gt=0.0, le=1.0)
    block_rows: PositiveInt = Field(4096, description="embeddings compared per matrix product")
    scope: Scope = "source"
    # distributed plan (pipeline/dedup_plan.py): k-means into about one cluster per `cluster_rows`
    # kept rows, then the greedy below inside each cluster (SemDeDup-style). A near pair split
    # across two clusters is not found; with one cluster the decisions equal plan()'s.
    cluster_rows: PositiveInt = Field(100_000)
    kmeans_sample: PositiveInt = Field(2_000, description="rows sampled per map task for fitting centroids")
    kmeans_iterations: PositiveInt = Field(20)
    shard_rows: PositiveInt = Field(1_000_000, description="rows per exact-hash shard")
    chunk_rows: PositiveInt = Field(50_000, description="rows per map task")


@register
class DedupImages(PlannedDecisions, Stage):
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
        rows = [r for r in rows if r["clip_embedding"]]
        if not rows:
            return
        emb = np.asarray([r["clip_embedding"] for r in rows], np.float32)
        for j, of, sim in greedy_near(emb, self.config.near_threshold, self.config.block_rows):
            self.duplicates[rows[j]["sample_id"]] = ("near_duplicate", rows[of]["sample_id"], f"cosine {sim:.4f}")

    def process(self, batch: pa.Table) -> pa.Table:
        if self.plan_dir is not None:
            return self.apply_decisions(batch)
        verdicts = []
        for sid, status, reason, detail in zip(*(batch.column(c).to_pylist() for c in ("sample_id", "status", "reason", "detail"))):
            dup = self.duplicates.get(sid) if status == STATUS_KEPT else None
            if dup:
                verdicts.append((STATUS_FILTERED, dup[0], duplicate_detail(dup[1], dup[2])))
            else:
                verdicts.append((status, reason, detail))
        return with_verdicts(batch, verdicts)


def duplicate_detail(of: str, why: str) -> str:
    return f"duplicate of {of} ({why})"


def rank_key(sid: str, aesthetic: float | None) -> tuple[float, str]:
    """plan()'s order: best aesthetic first (missing or 0 last), then sample_id."""
    return (-(aesthetic or float("-inf")), sid)


def greedy_near(emb: np.ndarray, thr: float, block_rows: int) -> list[tuple[int, int, float]]:
    """Rows in rank order; a row is a near-duplicate of the most similar better-ranked kept row
    at cosine >= thr. Returns (row, kept row, cosine) for each dropped row."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    kept_idx, out = np.empty(0, np.int64), []
    for start in range(0, len(emb), block_rows):
        block = emb[start : start + block_rows]
        vs_kept = block @ emb[kept_idx].T if kept_idx.size else np.zeros((len(block), 0), np.float32)
        inner = block @ block.T
        new_kept: list[int] = []
        for j in range(len(block)):
            sims = np.concatenate([vs_kept[j], inner[j, new_kept]])
            if sims.size and sims.max() >= thr:
                k = int(sims.argmax())
                of = int(kept_idx[k]) if k < kept_idx.size else start + new_kept[k - kept_idx.size]
                out.append((start + j, of, float(sims.max())))
            else:
                new_kept.append(j)
        kept_idx = np.concatenate([kept_idx, start + np.asarray(new_kept, np.int64)])
    return out
