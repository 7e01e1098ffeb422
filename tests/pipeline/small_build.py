"""A small two-source build for the crash and fault tests: photos downloaded from a loopback server
(8 rows, 2 partitions) and prompts deduplicated by a global stage (16 rows, 4 partitions).

Also what those tests compare: shard bytes and the catalog's accounting (every input row kept by
the last step or rejected by exactly one step).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote_plus

import duckdb

from stages.yfcc import format_line
from tests.stages.loopback import LoopbackServer, QuietHandler, jpeg

REPO = Path(__file__).resolve().parents[2]
PROMPTS = REPO / "recipes" / "data" / "tiny" / "midjourney_prompts.jsonl"
N_PHOTOS, ROWS_PER_PARTITION = 8, 4

RECIPE = """
name: crash-points
seed: 7
rows_per_partition: {rows}
sources:
  photos:
    kind: yfcc_metadata
    paths: [photos.tsv]
    steps:
      - {{stage: yfcc_captions, licenses: [Attribution License]}}
      - {{stage: download_images, resolution: 16, timeout: 60, thread_count: 4, allow_networks: [127.0.0.1/32]}}
      - {{stage: preprocess_images, mode: understanding, resolution: 16}}
  prompts:
    kind: midjourney_prompts
    paths: [prompts.jsonl]
    steps:
      - {{stage: clean_prompts, min_words: 3, max_chars: 600, blocklist: [gore, nsfw]}}
      {extra_prompt_step}
      - {{stage: dedup_prompts, threshold: 0.8}}
mix:
  global_batch: 2
  rows_per_shard: 4
  stages:
    stage1: {{ratio: {{understanding: 1, generation: 1}}, sources: {{photos: 1, prompts: 1}}, batches: 4}}
"""


class PhotoServer(LoopbackServer):
    """Serves /<i>.jpg for photo i; a photo not in `open` waits (up to a minute) until `open_all()`.

    Holding requests is how a test makes a kill land inside the download: the build is waiting on
    this server, with whatever the open photos allowed already committed.
    """

    def __init__(self):
        self.hits: list[int] = []
        self.open: set[int] = set(range(N_PHOTOS))
        self.gate = threading.Event()
        self.waiting = 0
        outer = self

        class Handler(QuietHandler):
            def do_GET(self):
                i = int(self.path.strip("/").split(".")[0]) if self.path[1:2].isdigit() else -1
                if i >= 0 and i not in outer.open:
                    outer.waiting += 1
                    outer.gate.wait(60)
                outer.hits.append(i)
                self.send_body(jpeg(20 + 3 * i, 12 + i, (10 * i, 200 - 10 * i, 40)) if 0 <= i < N_PHOTOS else None)

        super().__init__(Handler)

    def hold(self, keep_open=()) -> None:
        self.open, self.waiting = set(keep_open), 0
        self.gate.clear()

    def open_all(self) -> None:
        self.open = set(range(N_PHOTOS))
        self.gate.set()


def write_inputs(directory: Path, server_base: str, extra_prompt_step: str = "") -> Path:
    """photos.tsv (one licence the recipe refuses, one 404), prompts.jsonl and the recipe; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "photos.tsv", "w") as fh:
        for i in range(N_PHOTOS):
            url = f"{server_base}/{'gone' if i == 5 else i}.jpg"
            license_ = "All Rights Reserved" if i == 6 else "Attribution License"
            fh.write(format_line({"line": i, "id": str(i), "title": quote_plus(f"A red boat number {i} on the sea"), "url": url,
                                  "license": quote_plus(license_), "marker": "0"}))
    lines = PROMPTS.read_text().splitlines()[:14]
    lines += [lines[0], json.dumps({"prompt": "gore everywhere in a dark alley at night"})]  # a duplicate, a blocked word
    (directory / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    recipe = directory / "recipe.yaml"
    recipe.write_text(RECIPE.format(rows=ROWS_PER_PARTITION, extra_prompt_step=extra_prompt_step))
    return recipe


# -- running the CLI as its own process group, with its own Ray -------------------------------
class Build:
    """`python -m pipeline build` in a new session with an embedded Ray under its own temp dir, so
    SIGKILL to the process group is the whole crash and `stop()` cleans up only what it started."""

    def __init__(self, recipe: Path, out: Path, env: dict | None = None):
        self.ray_tmp = tempfile.mkdtemp(prefix="jfk", dir="/tmp")  # Ray's socket paths must stay < 108 bytes
        self.log = open(out.parent / f"{out.name}-{time.monotonic_ns()}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "build", str(recipe), "--out", str(out)], cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": self.ray_tmp,
                 "RAY_ADDRESS": "", **(env or {})},
            start_new_session=True, stdout=self.log, stderr=subprocess.STDOUT)

    def kill_when(self, condition, timeout: float = 600) -> None:
        """SIGKILL the whole process group (driver, raylet, GCS, workers, img2dataset) once `condition()` holds."""
        deadline = time.time() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the build ended (rc {self.proc.returncode}) before the kill point:\n{self.output()[-3000:]}"
            assert time.time() < deadline, "the kill point was never reached"
            time.sleep(0.01)
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.stop()

    def finish(self, timeout: float = 600) -> str:
        rc = self.proc.wait(timeout)
        self.stop()
        out = self.output()
        assert rc == 0, out[-5000:]
        return out

    def stop(self) -> None:
        """The `ray stop` of this run alone: nothing of its process group may outlive it."""
        deadline = time.time() + 30
        while live := _live_members(self.proc.pid):
            assert time.time() < deadline, f"processes of the killed build survived: {live}"
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()


def _live_members(pgid: int) -> list[int]:
    """Processes of a process group that are not zombies (a zombie waits for whoever reaps orphans)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


# -- what a resumed build must equal ---------------------------------------------------------------
def shards(build: Path) -> dict[str, bytes]:
    """Every index shard's bytes, and per stage a digest of the rows they point at in the work
    files (the shards are an index: equal index bytes alone would not show equal payloads)."""
    from model.shards import ShardSet

    out = {p.relative_to(build).as_posix(): p.read_bytes() for p in sorted((build / "shards").rglob("shard-*.parquet"))}
    for stage in sorted({p.parent.name for p in (build / "shards").rglob("shard-*.parquet")}):
        digest = hashlib.blake2b()
        for row in ShardSet.open(build, stage).iter_rows():
            digest.update(repr(sorted(row.items())).encode())
        out[f"rows:{stage}"] = digest.digest()
    return out


def accounting(build: Path) -> dict:
    """The catalog's per-step counts and rejections, checked for each input row being accounted once."""
    con = duckdb.connect(str(build / "catalog.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT status FROM builds").fetchall() == [("succeeded",)]
        runs = con.execute("SELECT source, step, stage, rows_read, rows_in, rows_kept, rows_filtered, rows_failed, partitions "
                           "FROM stage_runs ORDER BY source, step").fetchall()
        rejected = con.execute("SELECT source, step, stage, sample_id, status, reason FROM rejections ORDER BY ALL").fetchall()
        for source in {r[0] for r in runs}:
            steps = sorted(d for d in (build / "work" / source).iterdir() if d.name[:2].isdigit())
            read = _ids(con, steps[0])
            final = _ids(con, steps[-1], "status = 'kept'")
            gone = [r[3] for r in rejected if r[0] == source]
            assert len(read) == len(set(read)) and len(gone) == len(set(gone)) and len(final) == len(set(final)), source
            assert sorted(read) == sorted(gone + final), f"{source}: a row was lost or counted twice"
        return {"stage_runs": runs, "rejections": rejected}
    finally:
        con.close()


def _ids(con, step_dir: Path, where: str = "true") -> list[str]:
    files = [str(p) for p in sorted(step_dir.glob("part-*.parquet"))]
    return [r[0] for r in con.execute(f"SELECT sample_id FROM read_parquet(?) WHERE {where}", [files]).fetchall()]


def committed(step_dir: Path) -> list[str]:
    """Names of the parts committed (marker written) in a step directory."""
    return sorted(p.name.removesuffix(".json") for p in (step_dir / "_done").glob("part-*.json")) if (step_dir / "_done").is_dir() else []
