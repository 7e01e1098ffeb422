"""Global stage `dedup_prompts`: exact and MinHash-LSH near-duplicate prompts, decided once."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH
from pydantic import Field

from pipeline.schema import STATUS_FILTERED, STATUS_KEPT
from stages.base import Stage, StageConfig, StageError, register, with_verdicts
from stages.dedup_shared import PlannedDecisions, Scope, splitmix64

# Everything but letters and digits separates words: "A Cat, at NIGHT!" == "a cat at night".
NON_WORD = re.compile(r"[\W_]+")
SKETCH_CHUNK = 8192


def normalise(prompt: str) -> str:
    return " ".join(NON_WORD.sub(" ", prompt.casefold()).split())


def shingles(words: list[str], size: int) -> list[bytes]:
    """Word n-grams; prompts shorter than `size` words fall back to single words."""
    if len(words) < size:
        size = 1
    return sorted({" ".join(words[i:i + size]).encode("utf-8") for i in range(len(words) - size + 1)}) or [b""]


class DedupPromptsConfig(StageConfig):
    num_perm: int = Field(128, ge=16, le=1024)
    shingle_size: int = Field(3, ge=1, le=10, description="words per shingle")
    threshold: float = Field(0.8, gt=0.0, lt=1.0, description="estimated Jaccard at or above which prompts are near-duplicates")
    seed: int = 1
    # LSH only proposes candidates and each one is checked against `threshold`, so its bands
    # favour recall: with (0.5, 0.5) datasketch finds 40% of pairs at Jaccard 0.8, with
    # (0.1, 0.9) 87%, and 97% at 0.85.
    false_negative_weight: float = Field(0.9, gt=0.0, lt=1.0)
    scope: Scope = "source"
    # distributed plan (pipeline/dedup_plan.py): rows per signature shard and per map task; they
    # bound each process's memory and do not change the decisions
    shard_rows: int = Field(250_000, ge=1)
    chunk_rows: int = Field(100_000, ge=1)


@register
class DedupPrompts(PlannedDecisions, Stage):
    """The first prompt of a duplicate cluster (in sample_id order) stays; the others are filtered."""

    name = "dedup_prompts"
    Config = DedupPromptsConfig
    needs = ("prompt",)
    is_global = True
    batch_size = 4096

    def __init__(self, config, context):
        super().__init__(config, context)
        self._planned: frozenset[str] | None = None
        self._dropped: dict[str, tuple[str, str]] = {}

    def plan(self, table: pa.Table) -> None:
        all_ids, all_prompts = table.column("sample_id").to_pylist(), table.column("prompt").to_pylist()
        order = sorted(range(table.num_rows), key=all_ids.__getitem__)
        ids = [all_ids[i] for i in order]
        first_of: dict[str, str] = {}  # normalised text -> the first sample_id that has it
        copies: dict[str, str] = {}  # exact copy -> that first sample_id
        unique: dict[str, list[str]] = {}  # first sample_id -> its words, in sample_id order
        for sid, i in zip(ids, order):
            norm = normalise(all_prompts[i] or "")
            if norm in first_of:
                copies[sid] = first_of[norm]
            else:
                first_of[norm] = sid
                unique[sid] = norm.split()
        dropped = self._near_duplicates(unique)
        for sid, first in copies.items():
            # a copy of a near-duplicate points at the kept prompt, like the one it copies
            dropped[sid] = dropped.get(first) or ("duplicate", first)
        self._planned = frozenset(ids)
        self._dropped = dropped

    def _near_duplicates(self, unique: dict[str, list[str]]) -> dict[str, tuple[str, str]]:
        """Greedy leaders in sample_id order: a prompt is compared only with prompts already
        kept, so every filtered row names a kept one and input order does not matter."""
        cfg = self.config
        weights = (1.0 - cfg.false_negative_weight, cfg.false_negative_weight)
        lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=weights)
        kept_values: dict[str, np.ndarray] = {}  # uint32 signatures of kept prompts (affine32 fits)
        dropped: dict[str, tuple[str, str]] = {}
        ids, words = list(unique), list(unique.values())
        for start in range(0, len(ids), SKETCH_CHUNK):
            # bulk() hashes a chunk with one set of permutations (no per-prompt set-up); chunks
            # keep memory to the kept signatures rather than every sketch at once
            sketches = MinHash.bulk((shingles(w, cfg.shingle_size) for w in words[start:start + SKETCH_CHUNK]),
                                    num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32")
            for sid, sketch in zip(ids[start:start + SKETCH_CHUNK], sketches):
                values = sketch.hashvalues.astype(np.uint32)
                best = None
                for other in sorted(lsh.query(sketch)):
                    score = float(np.count_nonzero(values == kept_values[other])) / cfg.num_perm
                    if score >= cfg.threshold:
                        best = (other, score)
                        break
                if best is None:
                    lsh.insert(sid, sketch, check_duplication=False)
                    kept_values[sid] = values
                else:
                    dropped[sid] = ("near_duplicate", near_detail(*best))
        return dropped

    def process(self, batch: pa.Table) -> pa.Table:
        if self.plan_dir is not None:
            return self.apply_decisions(batch)
        if self._planned is None:
            raise StageError(f"{self.name}: plan() must run on all rows before process()")
        verdicts = []
        rows = zip(batch.column("sample_id").to_pylist(), batch.column("status").to_pylist(),
                   batch.column("reason").to_pylist(), batch.column("detail").to_pylist())
        for sid, status, reason, detail in rows:
            if status != STATUS_KEPT:
                verdicts.append((status, reason, detail))
            elif sid not in self._planned:
                raise StageError(f"{self.name}: row {sid} was not in the plan; plan() must see every kept row")
            elif sid in self._dropped:
                verdicts.append((STATUS_FILTERED, *self._dropped[sid]))
            else:
                verdicts.append((STATUS_KEPT, None, None))
        return with_verdicts(batch, verdicts)


# -- pieces of the distributed plan (pipeline/dedup_plan.py runs them as Ray tasks) -------------
def band_shape(cfg: DedupPromptsConfig) -> tuple[int, int]:
    """(bands, rows per band) exactly as datasketch's MinHashLSH picks them for this config."""
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm,
                     weights=(1.0 - cfg.false_negative_weight, cfg.false_negative_weight))
    return lsh.b, lsh.r


def exact_keys(prompts: list[str | None]) -> tuple[list[str], np.ndarray]:
    """Normalised texts and a 128-bit key of each (two uint64 columns): equal key = exact copy."""
    norms = [normalise(p or "") for p in prompts]
    raw = b"".join(hashlib.blake2b(n.encode("utf-8"), digest_size=16).digest() for n in norms)
    return norms, np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 2)


def signatures(words: list[list[str]], cfg: DedupPromptsConfig) -> np.ndarray:
    """uint32 MinHash signatures, the same values plan() compares (bulk, affine32, same seed)."""
    out = np.empty((len(words), cfg.num_perm), np.uint32)
    for start in range(0, len(words), SKETCH_CHUNK):
        sketches = MinHash.bulk((shingles(w, cfg.shingle_size) for w in words[start:start + SKETCH_CHUNK]),
                                num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32")
        for i, sketch in enumerate(sketches):
            out[start + i] = sketch.hashvalues
    return out


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n, bands] uint64: equal key <=> equal band slice (as datasketch's LSH hashtables), up to
    64-bit collisions, which only add candidates that must still pass the threshold."""
    keys = np.empty((sigs.shape[0], bands), np.uint64)
    for b in range(bands):
        h = np.full(sigs.shape[0], b, np.uint64)
        for v in sigs[:, b * rows:(b + 1) * rows].T.astype(np.uint64):
            h = splitmix64(h ^ v)
        keys[:, b] = h
    return keys


def greedy_over_edges(edges: list[tuple[str, str, float]]) -> dict[str, tuple[str, float]]:
    """plan()'s greedy leaders on the graph of verified pairs: in sample_id order, a prompt with a
    kept neighbour of smaller id is dropped in favour of the smallest one. Equal to plan(), whose
    LSH query returns the same candidates and which takes the first (sorted) that passes."""
    neighbours: dict[str, dict[str, float]] = {}
    for a, b, score in edges:
        neighbours.setdefault(a, {})[b] = score
        neighbours.setdefault(b, {})[a] = score
    kept: set[str] = set()
    dropped: dict[str, tuple[str, float]] = {}
    for sid in sorted(neighbours):
        leaders = [o for o in neighbours[sid] if o < sid and o in kept]
        if leaders:
            lead = min(leaders)
            dropped[sid] = (lead, neighbours[sid][lead])
        else:
            kept.add(sid)
    return dropped


def near_detail(leader: str, score: float) -> str:
    return f"{leader} (estimated Jaccard {score:.2f})"
