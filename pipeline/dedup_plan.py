"""Distributed dedup plans: dedup_prompts and dedup_images planned as Ray tasks over one or more
sources' partitions, with each process's memory bounded by its shard, chunk or cluster.

The driver holds no rows: each round's tasks write their outputs as Parquet files under the
plan's scratch directory and return counts, and the decisions land on disk, one file per
partition (stages/dedup_shared.py), which the stage's process() reads for its own partition.

Prompts: map tasks normalise, key (128-bit hash of the normalised text) and sketch their chunk;
signatures go to shards by key, LSH band keys to buckets by band key. Each bucket task turns its
colliding bands into candidate pairs (one entry per text, so exact copies add no pairs); each
shard-pair task verifies its pairs against the two shards' signatures; one task runs plan()'s
greedy over the verified edges (few: they are near-duplicates); each shard task resolves exact
copies; each chunk's task writes its partitions' decisions. The decisions equal plan()'s.

Images: exact groups by pixel hash in shard tasks (best ranked copy kept); the remaining rows go
to k-means clusters (centroids fitted in one task on a sample), and each cluster task runs
plan()'s greedy within its cluster (SemDeDup). With one cluster the decisions equal plan()'s.

This module and pipeline/runner.py are the ones that use Ray (imported where it is used).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import workdir
from pipeline.schema import SCORES_TYPE, STATUS_KEPT
from stages import dedup_images as di
from stages import prompt_dedup as pd
from stages.dedup_shared import PLAN_DONE, concat, fixed_list, matrix, split_by, write_decisions

log = logging.getLogger("janus_forge.build")


@dataclass(frozen=True)
class Member:
    """One source's input to the plan: its previous step's directory and partitions."""

    source: str
    prev_dir: Path
    parts: tuple[str, ...]


# -- which sources one plan covers: the runner's sources wait for each other at a shared step ------
@dataclass
class PlanWait:
    """A source stopped before a dedup step until the plan over every source it covers is made."""

    group: str  # the stage name (scope: build) or "<source>.<stage>"
    member: Member
    stage: object
    needed: bool  # some of its partitions are still to do


def plan_groups(recipe) -> dict[str, list[str]]:
    """Build-wide dedup steps (`scope: build`): stage name -> the sources it covers, in recipe order."""
    groups: dict[str, list[str]] = {}
    for name, source in recipe.sources.items():
        for step in source.steps:
            if getattr(step, "scope", None) == "build":
                groups.setdefault(step.stage, []).append(name)
    return groups


def run_sources(runs: dict, groups: dict[str, list[str]], plans_dir: Path) -> dict:
    """Drive each source's run (a generator yielding PlanWait, returning its final rows): at a dedup
    step a source waits until every selected source the step covers is there, then one plan
    serves them all (a source alone is a group of one). Returns {source: final rows}."""
    finals, waiting = {}, {}

    def advance(name: str) -> None:
        try:
            waiting[name] = next(runs[name])
        except StopIteration as done:
            finals[name] = done.value

    def members(group: str) -> list[str]:
        return [n for n in groups[group] if n in runs] if group in groups else [group.split(".", 1)[0]]

    for name in runs:
        advance(name)
    while waiting:
        ready = [g for g in dict.fromkeys(w.group for w in waiting.values())
                 if all(m in waiting and waiting[m].group == g for m in members(g))]
        if not ready:
            raise RuntimeError(f"dedup steps wait on each other in a cycle: {sorted((n, w.group) for n, w in waiting.items())}; "
                               "order the build-wide dedup steps the same way in every source")
        stops = [waiting.pop(m) for m in members(ready[0])]
        if any(w.needed for w in stops):
            log.info("planning %s over %s", ready[0], ", ".join(w.member.source for w in stops))
            plan_dir = plan(stops[0].stage.config, [w.member for w in stops], plans_dir / ready[0])
            for w in stops:
                w.stage.use_plan(plan_dir)
        for w in stops:
            advance(w.member.source)
    return finals


Chunk = list[tuple[str, str, str]]  # (source, directory, part) read by one map task
OUT = pa.schema([("sample_id", pa.string()), ("source", pa.string()), ("part", pa.string()),
                 ("reason", pa.string()), ("detail", pa.string()), ("chunk", pa.int32())])


def plan(config, members: list[Member], plan_dir: Path) -> Path:
    """Plan `config` (a dedup_prompts or dedup_images config) over `members`; decisions under
    plan_dir, written into a fresh directory and renamed, so a plan dir that exists is complete."""
    plan_dir = Path(plan_dir)
    tmp = plan_dir.with_name(plan_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(plan_dir, ignore_errors=True)
    chunks = _chunks(members, config.chunk_rows)
    rows = workdir.count_rows([Path(d) / p for c in chunks for _, d, p in c])
    planner = _plan_prompts if config.stage == "dedup_prompts" else _plan_images
    counts = planner(config, chunks, rows, tmp)
    workdir.write_atomic(tmp / PLAN_DONE, json.dumps({"stage": config.stage, "sources": [m.source for m in members],
                                                     "rows": rows, **counts}).encode())
    tmp.rename(plan_dir)
    return plan_dir


def _chunks(members: list[Member], chunk_rows: int) -> list[Chunk]:
    chunks: list[Chunk] = [[]]
    size = 0
    for m in members:
        for p in m.parts:
            n = pq.read_metadata(m.prev_dir / p).num_rows
            if chunks[-1] and size + n > chunk_rows:
                chunks.append([])
                size = 0
            chunks[-1].append((m.source, str(m.prev_dir), p))
            size += n
    return chunks


def _read_chunk(chunk: Chunk, schema: pa.Schema, index: int) -> pa.Table:
    """The kept rows of a chunk's partitions (`schema`'s columns), with source, part and chunk."""
    tables = [schema.empty_table().append_column("source", pa.array([], pa.string())).append_column("part", pa.array([], pa.string()))]
    for source, directory, part in chunk:
        path = Path(directory) / part
        if pq.read_metadata(path).num_rows == 0:  # an empty partition may lack work-only columns
            continue
        t = pq.read_table(path, columns=schema.names, filters=[("status", "=", STATUS_KEPT)]).cast(schema)
        tables.append(t.append_column("source", pa.array([source] * t.num_rows, pa.string()))
                       .append_column("part", pa.array([part] * t.num_rows, pa.string())))
    t = pa.concat_tables(tables).combine_chunks()
    return t.append_column("chunk", pa.array(np.full(t.num_rows, index, np.int32)))


def _run(fn, calls: list[tuple]) -> list:
    """Run fn as one Ray task per argument tuple and wait: each round of the plan is a barrier, and
    what a task returns is a small number (its outputs are files), so the driver holds no data."""
    import ray

    task = ray.remote(fn)
    return ray.get([task.remote(*args) for args in calls])


# Between rounds, rows move through files under the plan's scratch directory (the build directory
# is a shared POSIX filesystem): <round>/<destination>/<source task>.parquet. Ray's object store
# would do too, but it keeps small task outputs inline in their owner, the driver, and the
# chunk x cluster outputs are many and small.
def _emit(scratch: str, round_: str, src: int, tables: list[pa.Table]) -> int:
    for dest, t in enumerate(tables):
        if t.num_rows:
            path = Path(scratch) / round_ / f"{dest:05d}" / f"{src:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(t, path)
    return sum(t.num_rows for t in tables)


def _gather(scratch: str, round_: str, dest: int, schema: pa.Schema) -> pa.Table:
    folder = Path(scratch) / round_ / f"{dest:05d}"
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    return concat([pq.read_table(f) for f in files], schema)


def _write(scratch: str, plan_dir: str, index: int, chunk: Chunk) -> int:
    t = pa.concat_tables([_gather(scratch, "copy", index, OUT), _gather(scratch, "decision", index, OUT)], promote_options="permissive")
    for source in sorted({s for s, _, _ in chunk}):
        write_decisions(Path(plan_dir), source, [p for s, _, p in chunk if s == source], t.filter(pc.equal(t["source"], source)))
    return t.num_rows


def _decisions(sids, sources, parts, chunks, reasons, details, n_chunks: int) -> list[pa.Table]:
    t = pa.table([pa.array(sids, pa.string()), pa.array(sources, pa.string()), pa.array(parts, pa.string()),
                  pa.array(reasons, pa.string()), pa.array(details, pa.string()), pa.array(chunks, pa.int32())], schema=OUT)
    return split_by(t, np.asarray(chunks, np.int64), n_chunks)


# -- prompts -------------------------------------------------------------------------------------
PROMPT_IN = pa.schema([("sample_id", pa.string()), ("prompt", pa.string())])
SHARD = pa.schema([("sample_id", pa.string()), ("key_hi", pa.uint64()), ("key_lo", pa.uint64()), ("source", pa.string()),
                   ("part", pa.string()), ("chunk", pa.int32())])
BAND = pa.schema([("band_key", pa.uint64()), ("key_hi", pa.uint64()), ("key_lo", pa.uint64()),
                  ("sample_id", pa.string()), ("shard", pa.int32())])
PAIR = pa.schema([("a", pa.string()), ("b", pa.string()), ("shard_a", pa.int32()), ("shard_b", pa.int32())])
EDGE = pa.schema([*PAIR, ("score", pa.float64())])
NEAR = pa.schema([("sample_id", pa.string()), ("leader", pa.string()), ("score", pa.float64())])


def _pair_index(sa: int, sb: int) -> int:
    sa, sb = min(sa, sb), max(sa, sb)
    return sb * (sb + 1) // 2 + sa


def _plan_prompts(cfg, chunks: list[Chunk], rows: int, plan_dir: Path) -> dict:
    n_shards = max(1, math.ceil(rows / cfg.shard_rows))
    n_chunks, scratch = len(chunks), str(plan_dir / "_scratch")
    bands = pd.band_shape(cfg)
    _run(_prompt_map, [(scratch, c, i, cfg, n_shards, bands) for i, c in enumerate(chunks)])
    _run(_prompt_buckets, [(scratch, r, n_shards) for r in range(n_shards)])
    _run(_prompt_verify, [(scratch, sa, sb, cfg.threshold, cfg.num_perm) for sb in range(n_shards) for sa in range(sb + 1)])
    _run(_prompt_greedy, [(scratch, n_shards)])
    _run(_prompt_final, [(scratch, s, n_chunks) for s in range(n_shards)])
    written = _run(_write, [(scratch, str(plan_dir), i, c) for i, c in enumerate(chunks)])
    shutil.rmtree(scratch)
    return {"shards": n_shards, "chunks": n_chunks, "filtered": sum(written)}


def _prompt_map(scratch: str, chunk: Chunk, index: int, cfg, n_shards: int, bands: tuple[int, int]) -> int:
    """Normalise, key and sketch a chunk: rows to shards by text key, band keys to buckets."""
    t = _read_chunk(chunk, PROMPT_IN, index).sort_by("sample_id")
    norms, keys = pd.exact_keys(t["prompt"].to_pylist())
    first: dict[tuple[int, int], int] = {}
    for i, (hi, lo) in enumerate(keys.tolist()):
        first.setdefault((hi, lo), i)
    unique = np.fromiter(first.values(), np.int64, len(first))  # first row of each text in this chunk
    sigs = pd.signatures([norms[i].split() for i in unique], cfg)
    shard = (keys[:, 0] % np.uint64(n_shards)).astype(np.int64)
    base = pa.table([t["sample_id"], pa.array(keys[:, 0].copy()), pa.array(keys[:, 1].copy()), t["source"], t["part"], t["chunk"]], schema=SHARD)
    sig_table = pa.table({"sample_id": t["sample_id"].take(pa.array(unique)), "sig": fixed_list(sigs)})
    band = pd.band_keys(sigs, *bands).reshape(-1)  # [unique * bands]
    rep = np.repeat(unique, bands[0])
    entries = pa.table([pa.array(band), pa.array(keys[rep, 0]), pa.array(keys[rep, 1]),
                        t["sample_id"].take(pa.array(rep)), pa.array(shard[rep].astype(np.int32))], schema=BAND)
    _emit(scratch, "shard", index, split_by(base, shard, n_shards))
    _emit(scratch, "sig", index, split_by(sig_table, shard[unique], n_shards))
    return _emit(scratch, "band", index, split_by(entries, (band % np.uint64(n_shards)).astype(np.int64), n_shards))


def _prompt_buckets(scratch: str, bucket: int, n_shards: int) -> int:
    """Colliding bands -> candidate pairs, one entry per text (its smallest sample_id)."""
    n_pairs = n_shards * (n_shards + 1) // 2
    t = _gather(scratch, "band", bucket, BAND).sort_by(
        [("band_key", "ascending"), ("key_hi", "ascending"), ("key_lo", "ascending"), ("sample_id", "ascending")])
    bk, hi, lo = (t[c].to_numpy() for c in ("band_key", "key_hi", "key_lo"))
    first_of_text = np.ones(len(bk), bool)
    first_of_text[1:] = (bk[1:] != bk[:-1]) | (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    t, bk = t.filter(pa.array(first_of_text)), bk[first_of_text]
    shared = np.zeros(len(bk), bool)
    shared[1:] |= bk[1:] == bk[:-1]
    shared[:-1] |= bk[:-1] == bk[1:]
    idx = np.flatnonzero(shared)
    sids, shard, keys = t["sample_id"].take(pa.array(idx)).to_pylist(), t["shard"].to_numpy()[idx], bk[idx]
    a, b, sa, sb, dest = [], [], [], [], []
    start = 0
    for end in range(1, len(idx) + 1):
        if end == len(idx) or keys[end] != keys[start]:
            group = sorted(zip(sids[start:end], shard[start:end]))
            for i, (x, sx) in enumerate(group):
                for y, sy in group[i + 1:]:
                    a.append(x), b.append(y), sa.append(int(sx)), sb.append(int(sy)), dest.append(_pair_index(int(sx), int(sy)))
            start = end
    pairs = pa.table([pa.array(a, pa.string()), pa.array(b, pa.string()), pa.array(sa, pa.int32()), pa.array(sb, pa.int32())], schema=PAIR)
    return _emit(scratch, "pair", bucket, split_by(pairs, np.asarray(dest, np.int64), n_pairs))


def _prompt_verify(scratch: str, sa: int, sb: int, threshold: float, num_perm: int) -> int:
    """Candidate pairs of one shard pair -> the verified ones (estimated Jaccard >= threshold)."""
    index = _pair_index(sa, sb)
    pairs = _gather(scratch, "pair", index, PAIR)
    if not pairs.num_rows:
        return 0
    sig_schema = pa.schema([("sample_id", pa.string()), ("sig", pa.list_(pa.uint32(), num_perm))])
    sig_tables = [_gather(scratch, "sig", s, sig_schema) for s in {sa, sb}]
    pairs = pairs.group_by(["a", "b", "shard_a", "shard_b"]).aggregate([])  # a pair may collide in several bands
    wanted = pc.unique(pa.concat_arrays([pairs["a"].combine_chunks(), pairs["b"].combine_chunks()]))
    sig = pa.concat_tables([t.filter(pc.is_in(t["sample_id"], value_set=wanted)) for t in sig_tables], promote_options="permissive")
    row = {sid: i for i, sid in enumerate(sig["sample_id"].to_pylist())}
    values = matrix(sig["sig"], num_perm, np.uint32)
    a, b = pairs["a"].to_pylist(), pairs["b"].to_pylist()
    ia, ib = np.asarray([row[x] for x in a]), np.asarray([row[y] for y in b])
    score = np.count_nonzero(values[ia] == values[ib], axis=1) / num_perm
    keep = pa.array(score >= threshold)
    edges = pa.table([pairs["a"], pairs["b"], pairs["shard_a"], pairs["shard_b"], pa.array(score)], schema=EDGE).filter(keep)
    return _emit(scratch, "edge", index, [edges])


def _prompt_greedy(scratch: str, n_shards: int) -> int:
    """plan()'s greedy over every verified edge (near-duplicates only, so few) -> drops per shard."""
    t = _gather(scratch, "edge", 0, EDGE)
    a, b = t["a"].to_pylist(), t["b"].to_pylist()
    dropped = pd.greedy_over_edges(list(zip(a, b, t["score"].to_pylist())))
    shard_of = dict(zip(a, t["shard_a"].to_pylist())) | dict(zip(b, t["shard_b"].to_pylist()))
    sids = sorted(dropped)
    near = pa.table([pa.array(sids, pa.string()), pa.array([dropped[s][0] for s in sids], pa.string()),
                     pa.array([dropped[s][1] for s in sids], pa.float64())], schema=NEAR)
    # a text's copies live in its shard
    return _emit(scratch, "near", 0, split_by(near, np.asarray([shard_of[s] for s in sids], np.int64), n_shards))


def _prompt_final(scratch: str, shard: int, n_chunks: int) -> int:
    """Exact copies (the smallest sample_id of a text stays) and near drops of one shard -> decisions."""
    near = _gather(scratch, "near", shard, NEAR)
    t = _gather(scratch, "shard", shard, SHARD).sort_by([("key_hi", "ascending"), ("key_lo", "ascending"), ("sample_id", "ascending")])
    near_of = dict(zip(near["sample_id"].to_pylist(), zip(near["leader"].to_pylist(), near["score"].to_pylist())))
    hi, lo = t["key_hi"].to_numpy(), t["key_lo"].to_numpy()
    copy = np.zeros(len(hi), bool)
    copy[1:] = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
    sids = t["sample_id"].to_pylist()
    out = ([], [], [], [], [], [])
    leader = None
    cols = [t[c].to_pylist() for c in ("source", "part", "chunk")]
    for i, sid in enumerate(sids):
        if not copy[i]:
            leader = sid
            if sid not in near_of:
                continue
            reason, detail = "near_duplicate", pd.near_detail(*near_of[sid])
        elif leader in near_of:  # a copy of a near-duplicate points at the kept prompt, as in plan()
            reason, detail = "near_duplicate", pd.near_detail(*near_of[leader])
        else:
            reason, detail = "duplicate", leader
        for col, value in zip(out, (sid, cols[0][i], cols[1][i], cols[2][i], reason, detail)):
            col.append(value)
    return _emit(scratch, "decision", shard, _decisions(*out, n_chunks))


# -- images --------------------------------------------------------------------------------------
IMAGE_IN = pa.schema([("sample_id", pa.string()), ("pixel_hash", pa.string()), ("scores", SCORES_TYPE),
                      ("clip_embedding", pa.list_(pa.float32()))])
CLUSTER = pa.schema([("sample_id", pa.string()), ("aesthetic", pa.float64()), ("source", pa.string()), ("part", pa.string()),
                     ("chunk", pa.int32()), ("clip_embedding", pa.list_(pa.float32()))])
IMG_SHARD = pa.schema([("sample_id", pa.string()), ("pixel_hash", pa.string()), ("aesthetic", pa.float64()),
                       ("source", pa.string()), ("part", pa.string()), ("chunk", pa.int32())])


def _plan_images(cfg, chunks: list[Chunk], rows: int, plan_dir: Path) -> dict:
    import ray

    n_shards = max(1, math.ceil(rows / cfg.shard_rows))
    n_chunks, scratch = len(chunks), str(plan_dir / "_scratch")
    kept_rows = sum(_run(_image_map, [(scratch, c, i, n_shards, cfg.kmeans_sample) for i, c in enumerate(chunks)]))
    _run(_image_exact, [(scratch, s, n_chunks) for s in range(n_shards)])
    n_clusters = max(1, math.ceil(kept_rows / cfg.cluster_rows))
    centroids = ray.remote(_kmeans).remote(scratch, n_clusters, cfg.kmeans_iterations)  # a ref: k x d floats, never fetched here
    _run(_image_assign, [(scratch, c, i, centroids) for i, c in enumerate(chunks)])
    _run(_image_cluster, [(scratch, k, n_chunks, cfg.near_threshold, cfg.block_rows) for k in range(n_clusters)])
    written = _run(_write, [(scratch, str(plan_dir), i, c) for i, c in enumerate(chunks)])
    shutil.rmtree(scratch)
    return {"shards": n_shards, "chunks": n_chunks, "clusters": n_clusters, "filtered": sum(written)}


def _aesthetic(t: pa.Table) -> pa.Array:
    return pc.struct_field(t["scores"], "aesthetic").cast(pa.float64())


def _image_map(scratch: str, chunk: Chunk, index: int, n_shards: int, sample: int) -> int:
    t = _read_chunk(chunk, IMAGE_IN, index)
    h = t["pixel_hash"].to_pylist()
    shard = np.asarray([int.from_bytes(hashlib.blake2b(x.encode(), digest_size=8).digest(), "big") % n_shards if x else 0
                        for x in h], np.int64)
    base = pa.table([t["sample_id"], t["pixel_hash"], _aesthetic(t), t["source"], t["part"], t["chunk"]], schema=IMG_SHARD)
    has = pc.fill_null(pc.greater(pc.list_value_length(t["clip_embedding"]), 0), False)
    emb = t["clip_embedding"].filter(has)
    pick = np.random.default_rng(index).permutation(len(emb))[:sample]
    _emit(scratch, "shard", index, split_by(base, shard, n_shards))
    _emit(scratch, "sample", index, [pa.table({"clip_embedding": emb.take(pa.array(pick))})])
    return t.num_rows


def _image_exact(scratch: str, shard: int, n_chunks: int) -> int:
    """Same decoded pixels: the best-ranked copy stays (plan()'s order)."""
    t = _gather(scratch, "shard", shard, IMG_SHARD)
    rows = sorted(zip(t["sample_id"].to_pylist(), t["pixel_hash"].to_pylist(), t["aesthetic"].to_pylist(),
                      t["source"].to_pylist(), t["part"].to_pylist(), t["chunk"].to_pylist()),
                  key=lambda r: di.rank_key(r[0], r[2]))
    first: dict[str, str] = {}
    out = ([], [], [], [], [], [])
    for sid, h, _, source, part, chunk in rows:
        if h is None:
            continue
        if h in first:
            for col, v in zip(out, (sid, source, part, chunk, "exact_duplicate", di.duplicate_detail(first[h], "same decoded pixels"))):
                col.append(v)
        else:
            first[h] = sid
    return _emit(scratch, "copy", shard, _decisions(*out, n_chunks))


def _kmeans(scratch: str, k: int, iterations: int) -> np.ndarray | None:
    """Spherical k-means on the sampled embeddings (cosine, as the near test); None for one cluster."""
    if k == 1:
        return None
    x = matrix(_gather(scratch, "sample", 0, pa.schema([("clip_embedding", pa.list_(pa.float32()))]))["clip_embedding"], None, np.float32)
    if not len(x):
        return None
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    rng = np.random.default_rng(0)
    centroids = x[rng.choice(len(x), size=min(k, len(x)), replace=False)]
    for _ in range(iterations):
        label = np.argmax(x @ centroids.T, axis=1)
        for j in range(len(centroids)):
            members = x[label == j]
            if len(members):
                c = members.sum(0)
                centroids[j] = c / max(np.linalg.norm(c), 1e-12)
    return centroids


def _image_assign(scratch: str, chunk: Chunk, index: int, centroids: np.ndarray | None) -> int:
    """This chunk's rows that survived exact dedup, with embeddings, to their nearest centroid."""
    k = 1 if centroids is None else len(centroids)
    t = _read_chunk(chunk, IMAGE_IN, index)
    gone = _gather(scratch, "copy", index, OUT)["sample_id"].combine_chunks()
    keep = pc.and_(pc.invert(pc.is_in(t["sample_id"], value_set=gone)),
                   pc.fill_null(pc.greater(pc.list_value_length(t["clip_embedding"]), 0), False))
    t = t.filter(keep)
    t = pa.table([t["sample_id"], _aesthetic(t), t["source"], t["part"], t["chunk"], t["clip_embedding"]], schema=CLUSTER)
    if k == 1 or not t.num_rows:
        label = np.zeros(t.num_rows, np.int64)
    else:
        emb = matrix(t["clip_embedding"], None, np.float32)
        label = np.argmax(emb @ centroids.T, axis=1)
    return _emit(scratch, "cluster", index, split_by(t, label, k))


def _image_cluster(scratch: str, cluster: int, n_chunks: int, threshold: float, block_rows: int) -> int:
    """plan()'s greedy near dedup inside one cluster, rows in plan()'s rank order."""
    t = _gather(scratch, "cluster", cluster, CLUSTER)
    out = ([], [], [], [], [], [])
    if t.num_rows:
        order = sorted(range(t.num_rows), key=lambda i, s=t["sample_id"].to_pylist(), a=t["aesthetic"].to_pylist(): di.rank_key(s[i], a[i]))
        t = t.take(pa.array(order, pa.int64()))
        sids = t["sample_id"].to_pylist()
        emb = matrix(t["clip_embedding"], None, np.float32)
        source, part, chunk = (t[c].to_pylist() for c in ("source", "part", "chunk"))
        for j, of, sim in di.greedy_near(emb, threshold, block_rows):
            for col, v in zip(out, (sids[j], source[j], part[j], chunk[j], "near_duplicate", di.duplicate_detail(sids[of], f"cosine {sim:.4f}"))):
                col.append(v)
    return _emit(scratch, "decision", cluster, _decisions(*out, n_chunks))
