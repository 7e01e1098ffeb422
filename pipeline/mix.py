"""Mixing: kept rows of each source → training-stage shards holding the task ratio per batch.

The plan (which source fills each position) is computed from row counts alone, vectorised;
rows are then streamed through a bounded shuffle buffer per source, so memory stays flat in
the number of rows. Everything is a function of (recipe, inputs, seed): rebuilding gives the
same shards byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.recipe import MixConfig, TrainingStageMix
from pipeline.schema import STATUS_KEPT, TASKS, to_shard


class MixError(ValueError):
    pass


@dataclass
class SourceRows:
    """A source's final work files and how many kept rows they hold."""

    name: str
    task: str
    files: list[Path]
    rows: int


@dataclass
class MixResult:
    training_stage: str
    rows: int
    batches: int
    shards: list[dict] = field(default_factory=list)  # one per (shard, task, source)
    events: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # per source


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:8], "little")


def batch_task_plan(ratio: dict[str, float], global_batch: int, batches: int) -> np.ndarray:
    """Task index (into TASKS) for every position: each batch holds the ratio as exactly as integers allow.

    Per batch every task gets floor(B * share); the few leftover slots go to the tasks whose
    cumulative count lags its target most, so the long-run ratio is exact too. Inside a batch
    tasks are interleaved smoothly (largest deficit first).
    """
    total = sum(ratio.values())
    active = [t for t in TASKS if ratio.get(t, 0) > 0]
    shares = np.array([ratio[t] / total for t in active])
    base = np.floor(shares * global_batch).astype(int)
    given = np.zeros(len(active))
    orders: dict[tuple, np.ndarray] = {}
    out = np.empty(global_batch * batches, dtype=np.int8)
    for b in range(batches):
        quota = base.copy()
        leftover = global_batch - int(quota.sum())
        if leftover:
            deficit = shares * global_batch * (b + 1) - (given + quota)
            for i in np.argsort(-deficit, kind="stable")[:leftover]:
                quota[i] += 1
        given += quota
        key = tuple(quota)
        if key not in orders:
            orders[key] = _interleave(quota, [TASKS.index(t) for t in active])
        out[b * global_batch:(b + 1) * global_batch] = orders[key]
    return out


def _interleave(quota: np.ndarray, labels: list[int]) -> np.ndarray:
    """Smooth order of `quota[i]` copies of label i: the i-th copy sits near (k + .5) / quota."""
    times = np.concatenate([(np.arange(q) + 0.5) / q for q in quota if q > 0])
    which = np.concatenate([np.full(q, labels[i]) for i, q in enumerate(quota) if q > 0])
    return which[np.argsort(times, kind="stable")].astype(np.int8)


def source_plan(weights: list[float], n: int) -> np.ndarray:
    """Source index for each of n rows of one task, weighted, every prefix within 1 of target."""
    total = sum(weights)
    times, which = [], []
    for i, w in enumerate(weights):
        k = int(np.ceil(n * w / total)) + 1
        times.append((np.arange(k) + 0.5) / w)
        which.append(np.full(k, i, dtype=np.int32))
    order = np.argsort(np.concatenate(times), kind="stable")
    return np.concatenate(which)[order][:n]


class SourceStream:
    """Kept rows of one source in a seeded order: parts shuffled, rows shuffled in a bounded buffer.

    When the source runs out, policy decides: `repeat` replays epoch 0's order, `upsample`
    draws a fresh order each pass, `stop` raises (the planner prevents reaching that point).
    """

    def __init__(self, rows: SourceRows, seed: int, buffer: int, policy: str, events: list[dict]):
        self.src, self.seed, self.buffer, self.policy, self.events = rows, seed, buffer, policy, events
        self.epoch, self.served = 0, 0
        self._window: pa.Table | None = None
        self._perm = np.empty(0, dtype=np.int64)
        self._cursor = 0
        self._iter = self._epoch_rows(0)

    def _epoch_rows(self, epoch: int) -> Iterator[tuple[pa.Table, np.ndarray]]:
        """Windows of >= `buffer` rows with a permutation each (applied later, in one take)."""
        order_epoch = 0 if self.policy == "repeat" else epoch
        rng = np.random.default_rng(_seed(self.seed, self.src.name, order_epoch))
        files = [self.src.files[i] for i in rng.permutation(len(self.src.files))]
        window: list[pa.Table] = []
        size = 0
        for f in files:
            t = pq.read_table(f, filters=[("status", "=", STATUS_KEPT)])
            if t.num_rows:
                window.append(to_shard(t))
                size += t.num_rows
            if size >= self.buffer:
                yield pa.concat_tables(window), rng.permutation(size)
                window, size = [], 0
        if window:
            yield pa.concat_tables(window), rng.permutation(size)

    def take(self, n: int, position: int) -> list[tuple[pa.Table, np.ndarray]]:
        """The next n rows, as (window, row indices into it) pieces."""
        pieces = []
        while n:
            if self._window is None or self._cursor == len(self._perm):
                nxt = next(self._iter, None)
                if nxt is None:
                    self.epoch += 1
                    self.events.append({"source": self.src.name, "event": self.policy, "position": position,
                                        "detail": f"exhausted after {self.served} rows; pass {self.epoch + 1}"})
                    self._iter = self._epoch_rows(self.epoch)
                    continue
                (self._window, self._perm), self._cursor = nxt, 0
            k = min(n, len(self._perm) - self._cursor)
            pieces.append((self._window, self._perm[self._cursor:self._cursor + k]))
            self._cursor += k
            self.served += k
            n -= k
        return pieces


def mix_stage(name: str, spec: TrainingStageMix, cfg: MixConfig, sources: dict[str, SourceRows],
              out_dir: Path, build_id: str) -> MixResult:
    """Write DIR/shards/<name>/ atomically (a temporary directory, then rename)."""
    B = cfg.global_batch
    names = list(spec.sources)
    for s in names:
        if sources[s].rows == 0:
            raise MixError(f"mix.stages.{name}: source {s!r} has no kept rows (see the rejections table)")
    tasks = batch_task_plan(spec.ratio, B, spec.batches)
    plan = np.empty(len(tasks), dtype=np.int32)
    for t_idx, task in enumerate(TASKS):
        where = np.nonzero(tasks == t_idx)[0]
        members = [i for i, s in enumerate(names) if sources[s].task == task]
        if len(where):
            picks = source_plan([spec.sources[names[i]] for i in members], len(where))
            plan[where] = np.array(members, dtype=np.int32)[picks]
    events: list[dict] = []
    if cfg.on_exhausted == "stop":
        plan = _truncate_at_exhaustion(plan, names, sources, B, events)
    result = MixResult(name, len(plan), len(plan) // B, events=events)
    shard_rows = max(1, cfg.rows_per_shard // B) * B  # shards hold whole global batches
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    streams = [SourceStream(sources[s], _seed(cfg.seed, name), cfg.shuffle_buffer, cfg.on_exhausted, events) for s in names]
    for k, start in enumerate(range(0, len(plan), shard_rows)):
        part = plan[start:start + shard_rows]
        table = _assemble(part, streams, start)
        path = tmp / f"shard-{k:05d}.parquet"
        buf = pa.BufferOutputStream()
        # dictionary-encode only the low-cardinality columns: ids, text and images are unique
        pq.write_table(table, buf, use_dictionary=["task", "source"])
        data = buf.getvalue()
        path.write_bytes(data)  # the whole directory is renamed into place below
        _describe_shard(result, out_dir / path.name, data, table, names, part)
    manifest = {"training_stage": name, "build_id": build_id, "global_batch": B, "ratio": spec.ratio,
                "sources": spec.sources, "rows": result.rows, "batches": result.batches,
                "shards": sorted({s["path"].rsplit("/", 1)[-1] for s in result.shards}),
                "counts": result.counts, "events": events}
    (tmp / "_manifest.json").write_text(json.dumps(manifest, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return result


def _truncate_at_exhaustion(plan: np.ndarray, names: list[str], sources: dict[str, SourceRows], B: int, events: list[dict]) -> np.ndarray:
    end = len(plan)
    for i, s in enumerate(names):
        hits = np.nonzero(plan == i)[0]
        if len(hits) > sources[s].rows:
            pos = int(hits[sources[s].rows])
            if pos < end:
                end = pos
                events.append({"source": s, "event": "stop", "position": pos,
                               "detail": f"{s} ran out after {sources[s].rows} rows; stage cut to {pos // B} full batches"})
    end = (end // B) * B
    if end == 0:
        raise MixError(f"on_exhausted=stop: not even one global batch of {B} fits the smallest source")
    return plan[:end]


def _assemble(part: np.ndarray, streams: list[SourceStream], start: int) -> pa.Table:
    """Rows for one shard in plan order, gathered with a single vectorised take."""
    windows: list[pa.Table] = []
    window_offset: dict[int, int] = {}
    source_rows: list[np.ndarray] = []  # per source: row indices into the concatenated windows
    total = 0
    for i, stream in enumerate(streams):
        need = int((part == i).sum())
        idx = []
        for window, rows in (stream.take(need, start) if need else []):
            if id(window) not in window_offset:
                window_offset[id(window)] = total
                windows.append(window)
                total += window.num_rows
            idx.append(rows + window_offset[id(window)])
        source_rows.append(np.concatenate(idx) if idx else np.empty(0, dtype=np.int64))
    index = np.empty(len(part), dtype=np.int64)
    for i, rows in enumerate(source_rows):
        index[part == i] = rows  # positions of source i, in order, take its rows in order
    return pa.concat_tables(windows).take(pa.array(index))


def _describe_shard(result: MixResult, final_path: Path, data: pa.Buffer, table: pa.Table, names: list[str], part: np.ndarray) -> None:
    digest, size = hashlib.sha256(data).hexdigest(), data.size
    task_col = table.column("task")
    for i, s in enumerate(names):
        n = int((part == i).sum())
        if not n:
            continue
        result.counts[s] = result.counts.get(s, 0) + n
        first = int(np.argmax(part == i))
        result.shards.append({"task": task_col[first].as_py(), "source": s, "path": str(final_path),
                              "rows": n, "bytes": size, "sha256": digest})
