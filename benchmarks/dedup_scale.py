"""Peak memory of the distributed dedup plans (pipeline/dedup_plan.py) as the input grows.

    python benchmarks/dedup_scale.py [--small] [--prompts 200000 2000000] [--embeddings 200000 1000000]
    python benchmarks/dedup_scale.py --recall 20000 [10]   # near pairs lost to k-means vs plan()

Each size runs in a fresh process with its own local Ray (2 CPUs): synthetic rows are written
as work partitions first (by another process), then the plan runs and the script reads the peak
RSS (VmHWM) of the driver and of every Ray worker of that session. Prompts: 30-word prompts from a
5,000-word vocabulary, 10% exact copies and 10% near copies (last word changed, Jaccard ~0.93).
Embeddings: 128-d, 10% exact copies (same pixel hash), 10% near copies (cosine ~0.999), k-means
clusters of 20k rows. The driver holds object refs only, so its peak should not grow with the
input: the JSON line's `ratio` is peak driver RSS at the small size / at the large size (goal
>= 0.8). There is no bare-library baseline doing the same distributed work; `baseline` is the
driver's peak at the large size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PART_ROWS = 50_000


def write_prompts(out: Path, n: int, seed: int = 0) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vocab = np.asarray([f"w{i}" for i in range(5000)])
    for k, start in enumerate(range(0, n, PART_ROWS)):
        m = min(PART_ROWS, n - start)
        words = rng.integers(0, len(vocab), size=(m, 30))
        kind = rng.random(m)
        src = rng.integers(0, np.maximum(1, np.arange(m)), size=m)  # an earlier row of this partition
        copy = (kind < 0.1) & (np.arange(m) > 0)
        near = (kind >= 0.1) & (kind < 0.2) & (np.arange(m) > 0)
        words[copy] = words[src[copy]]
        words[near, :29] = words[src[near], :29]
        prompts = [" ".join(row) for row in vocab[words]]
        ids = [f"{x:032x}" for x in rng.integers(0, 2**63, size=m, dtype=np.int64)]
        pq.write_table(pa.table({"sample_id": ids, "prompt": prompts, "status": ["kept"] * m}), out / f"part-{k:05d}.parquet")


def write_embeddings(out: Path, n: int, seed: int = 0, dim: int = 128) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import SCORES_TYPE

    rng = np.random.default_rng(seed)
    for k, start in enumerate(range(0, n, PART_ROWS)):
        m = min(PART_ROWS, n - start)
        emb = rng.normal(size=(m, dim)).astype(np.float32)
        kind = rng.random(m)
        src = rng.integers(0, np.maximum(1, np.arange(m)), size=m)
        hashes = np.asarray([f"{start + i:x}" for i in range(m)], dtype=object)
        copy = (kind < 0.1) & (np.arange(m) > 0)
        near = (kind >= 0.1) & (kind < 0.2) & (np.arange(m) > 0)
        emb[copy], hashes[copy] = emb[src[copy]], hashes[src[copy]]
        emb[near] = emb[src[near]] + 0.04 * rng.normal(size=(int(near.sum()), dim)).astype(np.float32)
        ids = [f"{x:032x}" for x in rng.integers(0, 2**63, size=m, dtype=np.int64)]
        scores = pa.array([{"aesthetic": float(a), "clip_similarity": 0.3} for a in rng.uniform(4, 7, m)], SCORES_TYPE)
        flat = pa.array(emb.reshape(-1))
        col = pa.ListArray.from_arrays(pa.array(np.arange(0, m * dim + 1, dim, dtype=np.int32)), flat)
        pq.write_table(pa.table({"sample_id": ids, "pixel_hash": pa.array(list(hashes), pa.string()), "scores": scores,
                                 "clip_embedding": col, "status": ["kept"] * m}), out / f"part-{k:05d}.parquet")


def _hwm_kb(pid: str) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) if found else 0


def _workers_of(session: str) -> list[str]:
    """Ray worker processes of this session: children of its raylet (their titles read ray::...)."""
    procs = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
                ppid = re.search(r"PPid:\s+(\d+)", (proc / "status").read_text()).group(1)
            except (OSError, AttributeError):
                continue
            procs[proc.name] = (ppid, cmd)
    raylets = {pid for pid, (_, cmd) in procs.items() if "raylet" in cmd and session in cmd}
    return [pid for pid, (ppid, cmd) in procs.items() if ppid in raylets and cmd.startswith("ray::")]


def _rss_anon_kb(pid: str) -> int:
    try:
        found = re.search(r"RssAnon:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(found.group(1)) if found else 0


class PrivatePeak:
    """Samples the private (anonymous) RSS of the session's workers: VmHWM also counts the pages of
    Ray's shared-memory object store a worker has touched, which grow with the data, not the task."""

    def __init__(self, session: str, every: float = 0.25):
        import threading

        self.session, self.every, self.peak_kb, self._stop = session, every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        workers, listed = [], 0.0
        while not self._stop.is_set():
            if time.monotonic() - listed > 2.0:
                workers, listed = _workers_of(self.session), time.monotonic()
            self.peak_kb = max([self.peak_kb, *(_rss_anon_kb(p) for p in workers)])
            self._stop.wait(self.every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def run_plan(kind: str, data: Path) -> None:
    """Child process: plan over the partitions in `data`; print driver/worker peak RSS as JSON."""
    import ray

    from pipeline.dedup_plan import Member, plan
    from stages.dedup_images import DedupImagesConfig
    from stages.prompt_dedup import DedupPromptsConfig

    temp = tempfile.mkdtemp(prefix="dedup-scale-ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, object_store_memory=4 * 2**30, log_to_driver=False)
    config = (DedupPromptsConfig(stage="dedup_prompts") if kind == "prompts"
              else DedupImagesConfig(near_threshold=0.99, cluster_rows=20_000))
    parts = tuple(sorted(p.name for p in data.glob("part-*.parquet")))
    sampler = PrivatePeak(temp)
    t0 = time.perf_counter()
    plan_dir = plan(config, [Member("bench", data, parts)], data / "plan")
    seconds = time.perf_counter() - t0
    private_mb = sampler.stop()
    info = json.loads((plan_dir / "_plan.json").read_text())
    workers = _workers_of(temp)
    print(json.dumps({"seconds": round(seconds, 1), "driver_mb": _hwm_kb("self") / 1024, "workers": len(workers),
                      "worker_mb": max((_hwm_kb(p) for p in workers), default=0) / 1024,
                      "worker_private_mb": private_mb, **info}))
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)  # the session's logs


def split_recall(n: int, dim: int = 16, clusters: int = 10) -> dict:
    """Near pairs k-means splits: the clustered plan vs the single-process all-pairs plan() on the
    same planted set (low-dimensional, so cluster borders cut through near pairs more than CLIP's)."""
    import numpy as np
    import pyarrow.parquet as pq
    import ray

    from pipeline.dedup_plan import Member, plan
    from stages.base import StageContext
    from stages.dedup_images import DedupImages, DedupImagesConfig
    from stages.dedup_shared import decisions_file

    with tempfile.TemporaryDirectory(prefix="dedup-recall-", dir="/tmp") as tmp:
        data = Path(tmp)
        write_embeddings(data, n, seed=1, dim=dim)
        parts = tuple(sorted(p.name for p in data.glob("part-*.parquet")))
        table = pq.read_table(data, columns=["sample_id", "pixel_hash", "scores", "clip_embedding"]).sort_by("sample_id")
        config = DedupImagesConfig(near_threshold=0.99, cluster_rows=-(-n // clusters))
        reference = DedupImages(config, StageContext("bench", 0, data, "bench", "generation"))
        reference.plan(table)
        want = {s: d[1] for s, d in reference.duplicates.items() if d[0] == "near_duplicate"}
        temp = tempfile.mkdtemp(prefix="dedup-scale-ray-", dir="/tmp")
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
        plan_dir = plan(config, [Member("bench", data, parts)], data / "plan")
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        got = {}
        for p in parts:
            t = pq.read_table(decisions_file(plan_dir, "bench", p))
            got.update((s, d) for s, r, d in zip(t["sample_id"].to_pylist(), t["reason"].to_pylist(), t["detail"].to_pylist())
                       if r == "near_duplicate")
    found = len(set(want) & set(got))
    return {"rows": n, "clusters": clusters, "near_dropped_all_pairs": len(want), "near_dropped_clustered": len(got),
            "recall": round(found / max(1, len(want)), 4), "extra": len(set(got) - set(want))}


def measure(kind: str, n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"dedup-scale-{kind}-", dir="/tmp") as tmp:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        subprocess.run([sys.executable, __file__, "--write", kind, str(n), tmp], check=True, env=env)
        out = subprocess.run([sys.executable, __file__, "--run", kind, tmp], check=True, env=env, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{kind} {n:,}: {result['seconds']} s, driver peak {result['driver_mb']:.0f} MB, worker peak "
          f"{result['worker_mb']:.0f} MB ({result['workers']} workers; private, sampled: {result.get('worker_private_mb', 0):.0f} MB), filtered {result['filtered']:,}, "
          f"{result.get('shards')} shards, {result.get('clusters', '-')} clusters", flush=True)
    return result


def main() -> None:
    if sys.argv[1:2] == ["--write"]:
        kind, n, out = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
        return write_prompts(out, n) if kind == "prompts" else write_embeddings(out, n)
    if sys.argv[1:2] == ["--run"]:
        return run_plan(sys.argv[2], Path(sys.argv[3]))
    if sys.argv[1:2] == ["--recall"]:  # --recall N [CLUSTERS]
        return print(json.dumps(split_recall(int(sys.argv[2]), clusters=int(sys.argv[3]) if sys.argv[3:] else 10)))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="20k/200k prompts and 20k/100k embeddings")
    parser.add_argument("--prompts", type=int, nargs=2, default=None)
    parser.add_argument("--embeddings", type=int, nargs=2, default=None)
    args = parser.parse_args()
    prompts = args.prompts or ([20_000, 200_000] if args.small else [200_000, 2_000_000])
    embeddings = args.embeddings or ([20_000, 100_000] if args.small else [200_000, 1_000_000])
    figures = {}
    for kind, sizes in (("prompts", prompts), ("embeddings", embeddings)):
        small, large = (measure(kind, n) for n in sizes)
        figures[kind] = (small["driver_mb"], large["driver_mb"])
    ratio = min(s / l for s, l in figures.values())
    print(json.dumps({"benchmark": "dedup_scale", "ours": {k: round(v[0], 1) for k, v in figures.items()},
                      "baseline": {k: round(v[1], 1) for k, v in figures.items()}, "unit": "MB peak driver RSS (small size; large size)",
                      "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
