"""Mixing: kept rows of each source → a training-stage index holding the task ratio per batch.

Payload is written once. A row's payload (image bytes, VQ ids, text, conversation) stays in the
committed work partition its source's last stage wrote (DIR/work/<source>/NN-<stage>/part-*.parquet);
a training stage's shards are an *index* over those files, one row per training position, in
training order (layout below). Repeats, upsampling and the shuffle cost an index row (~10 bytes
compressed), never a copy of an image. `janus-forge export` materialises self-contained Parquet
(the Hugging Face `datasets` layout) when a copy is wanted.

    DIR/shards/<stage>/shard-NNNNN.parquet   index rows: step (int64, the global batch), task,
                                             source, file (payload path relative to DIR), row
                                             (int64, physical row of `file`, filtered rows counted)
    DIR/shards/<stage>/_done/shard-NNNNN.json  completion marker: the plan hash, rows, bytes, sha256
    DIR/shards/<stage>/_plan.json            the plan hash the markers belong to
    DIR/shards/<stage>/_manifest.json        ratio, global batch, counts, events, shard list (last)

The plan (which source fills each position) is computed from row counts alone, vectorised. Each
source's order (files shuffled, then rows shuffled within windows of >= shuffle_buffer rows) is
fixed by the seed and the per-file kept counts, and the generator state at the start of every
window is kept, so any shard can rebuild the rows it needs without the shards before it: shards
are written in parallel (the runner maps `write_shard` onto Ray tasks) and a shard whose marker
holds the current plan hash is not rewritten. Everything is a function of (recipe, inputs, seed):
rebuilding gives the same shards byte for byte, and the rows in the same order as the earlier
materialised shards held them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.recipe import MixConfig, TrainingStageMix
from pipeline.schema import STATUS_KEPT, TASKS
from pipeline.workdir import write_atomic


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
    written: int = 0  # shards written by this call (the rest were done)


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


INDEX_SCHEMA = pa.schema([("step", pa.int64()), ("task", pa.string()), ("source", pa.string()),
                          ("file", pa.string()), ("row", pa.int64())])
INDEX_FORMAT = "janus-forge-index/1"


@dataclass
class Window:
    """Consecutive files of one pass whose kept rows are shuffled together."""

    files: list[int]  # indices into SourceOrder.files
    sizes: list[int]  # kept rows of each
    state: dict  # numpy bit-generator state just before this window's permutation is drawn

    def permutation(self) -> np.ndarray:
        rng = np.random.default_rng()
        rng.bit_generator.state = self.state
        return rng.permutation(sum(self.sizes))


@dataclass
class SourceOrder:
    """A source's rows in training order, as windows: small (no row ids), so it travels to tasks."""

    name: str
    files: list[str]  # payload files, relative to the build directory
    kept: list[int]  # kept rows per file
    passes: dict[int, list[Window]]  # order of each pass used (repeat: pass 0 only)
    policy: str

    @property
    def rows(self) -> int:
        return sum(self.kept)

    def locate(self, served: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(file index, kept-row index in that file) of the rows served at these counts (0-based)."""
        files = np.empty(len(served), dtype=np.int64)
        kept_rows = np.empty(len(served), dtype=np.int64)
        passes, offsets = np.divmod(served, self.rows)
        order_pass = np.zeros_like(passes) if self.policy == "repeat" else passes
        for p in np.unique(order_pass):
            windows = self.passes[int(p)]
            ends = np.cumsum([sum(w.sizes) for w in windows])
            sel = np.nonzero(order_pass == p)[0]
            which = np.searchsorted(ends, offsets[sel], side="right")
            for w in np.unique(which):
                at = sel[which == w]
                window = windows[int(w)]
                local = window.permutation()[offsets[at] - (ends[w - 1] if w else 0)]
                starts = np.cumsum([0, *window.sizes])
                f = np.searchsorted(starts, local, side="right") - 1
                files[at] = np.array(window.files)[f]
                kept_rows[at] = local - starts[f]
        return files, kept_rows


def source_order(name: str, files: list[str], kept: list[int], seed: int, buffer: int, policy: str, passes: int) -> SourceOrder:
    """Draw the same generator sequence the streaming mixer drew: files permuted, then one
    permutation per window of >= `buffer` rows (the last window may be smaller)."""
    out: dict[int, list[Window]] = {}
    for p in range(1 if policy == "repeat" else passes):
        rng = np.random.default_rng(_seed(seed, name, p))
        windows, cur, sizes, size = [], [], [], 0
        for f in rng.permutation(len(files)):
            if kept[f]:
                cur.append(int(f))
                sizes.append(kept[f])
                size += kept[f]
            if size >= buffer:
                windows.append(Window(cur, sizes, rng.bit_generator.state))
                rng.permutation(size)  # advance exactly as the shuffle did
                cur, sizes, size = [], [], 0
        if cur:
            windows.append(Window(cur, sizes, rng.bit_generator.state))
        out[p] = windows
    return SourceOrder(name, files, kept, out, policy)


@dataclass
class ShardJob:
    """One shard of the index: positions [start, start + len(plan)) of the stage."""

    index: int
    start: int
    global_batch: int
    plan: np.ndarray  # source index (into the `orders` write_shard gets) per position
    served: list[int]  # rows each source served before this shard
    out_dir: str
    root: str  # the build directory payload paths are relative to
    plan_hash: str

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}.parquet"


def write_shard(job: ShardJob, orders: Sequence[SourceOrder], tasks: Sequence[str]) -> dict:
    """Write one index shard, then its marker (both atomic): a marker means a complete shard."""
    n = len(job.plan)
    file_col = np.empty(n, dtype=object)
    row_col = np.empty(n, dtype=np.int64)
    physical: dict[str, np.ndarray] = {}  # kept-row index -> physical row, per payload file
    for i, order in enumerate(orders):
        where = np.nonzero(job.plan == i)[0]
        if not len(where):
            continue
        files, kept_rows = order.locate(job.served[i] + np.arange(len(where)))
        for f in np.unique(files):
            rel = order.files[int(f)]
            if rel not in physical:
                status = pq.read_table(Path(job.root) / rel, columns=["status"]).column("status")
                physical[rel] = np.nonzero(np.asarray(status.to_numpy(zero_copy_only=False)) == STATUS_KEPT)[0]
            at = where[files == f]
            file_col[at] = rel
            row_col[at] = physical[rel][kept_rows[files == f]]
    names = [o.name for o in orders]
    table = pa.table({
        "step": pa.array(job.start // job.global_batch + np.arange(n) // job.global_batch, pa.int64()),
        "task": pa.array([tasks[i] for i in job.plan], pa.string()),
        "source": pa.array([names[i] for i in job.plan], pa.string()),
        "file": pa.array(list(file_col), pa.string()),
        "row": pa.array(row_col, pa.int64()),
    }, schema=INDEX_SCHEMA.with_metadata({b"janus_forge.index_format": INDEX_FORMAT.encode()}))
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, use_dictionary=["task", "source", "file"])
    data = buf.getvalue().to_pybytes()
    out = Path(job.out_dir)
    write_atomic(out / job.name, data)
    digest = hashlib.sha256(data).hexdigest()
    parts = [{"task": tasks[i], "source": s, "path": str(out / job.name), "rows": int((job.plan == i).sum()),
              "bytes": len(data), "sha256": digest} for i, s in enumerate(names) if (job.plan == i).any()]
    marker = {"plan": job.plan_hash, "shard": job.name, "rows": n, "parts": parts}
    write_atomic(_marker(out, job.index), json.dumps(marker).encode())
    return marker


def _marker(out_dir: Path, index: int) -> Path:
    return out_dir / "_done" / f"shard-{index:05d}.json"


def shard_done(out_dir: Path, index: int, plan_hash: str) -> bool:
    marker = _marker(out_dir, index)
    return marker.exists() and json.loads(marker.read_text())["plan"] == plan_hash and (out_dir / f"shard-{index:05d}.parquet").exists()


def kept_counts(files: Sequence[Path]) -> list[int]:
    """Kept rows per file, from the status column alone."""
    return [int(pc.sum(pc.equal(pq.read_table(f, columns=["status"]).column("status"), STATUS_KEPT)).as_py() or 0)
            for f in files]


def _sequential(fn: Callable, jobs: list[ShardJob], orders: list[SourceOrder], tasks: list[str]) -> list[dict]:
    return [fn(job, orders, tasks) for job in jobs]


def mix_stage(name: str, spec: TrainingStageMix, cfg: MixConfig, sources: dict[str, SourceRows],
              out_dir: Path, build_id: str, run_jobs: Callable = _sequential) -> MixResult:
    """Plan the stage, write the index shards not yet done (`run_jobs` maps `write_shard` over them:
    in order here, Ray tasks from the runner), then the manifest. The build directory is
    out_dir's grandparent (DIR/shards/<stage>)."""
    B = cfg.global_batch
    out_dir = Path(out_dir)
    root = out_dir.parent.parent
    names = list(spec.sources)
    plan, events = source_per_position(name, spec, cfg, sources)
    shard_rows = max(1, cfg.rows_per_shard // B) * B  # shards hold whole global batches
    rel = {s: [os.path.relpath(f, root) for f in sources[s].files] for s in names}
    kept = {s: kept_counts(sources[s].files) for s in names}
    plan_hash = _plan_hash(name, spec, cfg, build_id, rel, kept, sources)
    served_total = np.bincount(plan, minlength=len(names))
    orders = [source_order(s, rel[s], kept[s], _seed(cfg.seed, name), cfg.shuffle_buffer, cfg.on_exhausted,
                           -(-int(served_total[i]) // max(1, sum(kept[s]))))
              for i, s in enumerate(names)]
    jobs, served = [], np.zeros(len(names), dtype=np.int64)
    for k, start in enumerate(range(0, len(plan), shard_rows)):
        part = plan[start:start + shard_rows]
        jobs.append(ShardJob(k, start, B, part, [int(x) for x in served], str(out_dir), str(root), plan_hash))
        served += np.bincount(part, minlength=len(names))
    if cfg.on_exhausted != "stop":
        events = _exhaustion_events(jobs, orders, cfg.on_exhausted)
    _claim_stage_dir(out_dir, plan_hash)
    todo = [j for j in jobs if not shard_done(out_dir, j.index, plan_hash)]
    run_jobs(write_shard, todo, orders, [sources[s].task for s in names])
    result = MixResult(name, len(plan), len(plan) // B, events=events)
    for job in jobs:
        marker = json.loads(_marker(out_dir, job.index).read_text())
        result.shards += marker["parts"]
        for part in marker["parts"]:
            result.counts[part["source"]] = result.counts.get(part["source"], 0) + part["rows"]
    manifest = {"training_stage": name, "build_id": build_id, "format": INDEX_FORMAT, "global_batch": B,
                "ratio": spec.ratio, "sources": spec.sources, "rows": result.rows, "batches": result.batches,
                "shards": [j.name for j in jobs], "counts": result.counts, "events": events}
    write_atomic(out_dir / "_manifest.json", json.dumps(manifest, indent=2).encode())
    result.written = len(todo)
    return result


def source_per_position(name: str, spec: TrainingStageMix, cfg: MixConfig, sources: dict[str, SourceRows]) -> tuple[np.ndarray, list[dict]]:
    """Index into spec.sources for every training position (and the `stop` event, if any)."""
    names = list(spec.sources)
    for s in names:
        if sources[s].rows == 0:
            raise MixError(f"mix.stages.{name}: source {s!r} has no kept rows (see the rejections table)")
    tasks = batch_task_plan(spec.ratio, cfg.global_batch, spec.batches)
    plan = np.empty(len(tasks), dtype=np.int32)
    for t_idx, task in enumerate(TASKS):
        where = np.nonzero(tasks == t_idx)[0]
        members = [i for i, s in enumerate(names) if sources[s].task == task]
        if len(where):
            picks = source_plan([spec.sources[names[i]] for i in members], len(where))
            plan[where] = np.array(members, dtype=np.int32)[picks]
    events: list[dict] = []
    if cfg.on_exhausted == "stop":
        plan = _truncate_at_exhaustion(plan, names, sources, cfg.global_batch, events)
    return plan, events


def _plan_hash(name, spec, cfg, build_id, rel, kept, sources) -> str:
    """Everything a shard's content depends on; payload files by name, size and mtime, so a
    partition redone on resume (a reopened download) invalidates the shards that point into it."""
    files = {s: [(r, k, *_stat(f)) for r, k, f in zip(rel[s], kept[s], sources[s].files)] for s in rel}
    blob = json.dumps({"stage": name, "build": build_id, "spec": spec.model_dump(), "cfg": cfg.model_dump(exclude={"stages"}),
                       "files": files, "format": INDEX_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _stat(path: Path) -> tuple[int, int]:
    st = Path(path).stat()
    return st.st_size, st.st_mtime_ns


def _claim_stage_dir(out_dir: Path, plan_hash: str) -> None:
    """Markers of another plan (or shards of the old materialised format) are stale: start over."""
    plan_file = out_dir / "_plan.json"
    if out_dir.exists() and not (plan_file.exists() and json.loads(plan_file.read_text())["plan"] == plan_hash):
        shutil.rmtree(out_dir)
    if not plan_file.exists():
        write_atomic(plan_file, json.dumps({"plan": plan_hash}).encode())


def _exhaustion_events(jobs: list[ShardJob], orders: list[SourceOrder], policy: str) -> list[dict]:
    """One event per pass after the first, at the start of the shard that began it (as the
    streaming mixer logged them): ordered by shard, then source, then pass."""
    events = []
    for job in jobs:
        for i, order in enumerate(orders):
            before, now = job.served[i], job.served[i] + int((job.plan == i).sum())
            for p in range(max(1, -(-before // order.rows)), -(-now // order.rows)):
                events.append({"source": order.name, "event": policy, "position": job.start,
                               "detail": f"exhausted after {p * order.rows} rows; pass {p + 1}"})
    return events


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
