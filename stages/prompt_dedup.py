"""Global stage `dedup_prompts`: exact and MinHash-LSH near-duplicate prompts, decided once."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
from datasketch import MinHash, MinHashLSH
from pydantic import Field

from pipeline.schema import STATUS_FILTERED, STATUS_KEPT
from stages.base import Stage, StageConfig, StageError, register, with_verdicts

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


@register
class DedupPrompts(Stage):
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
                    dropped[sid] = ("near_duplicate", f"{best[0]} (estimated Jaccard {best[1]:.2f})")
        return dropped

    def process(self, batch: pa.Table) -> pa.Table:
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
