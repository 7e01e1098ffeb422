"""Faults inside a build on the real local Ray: a worker killed mid-stage, a committed part file
damaged after its commit, a disk that fills up under a write (the CLI-level run of that is in
test_crash_points.py)."""

import errno
import logging
import os
import signal
import threading
import time

import pytest

import tests.pipeline.probe_stage  # noqa: F401  (registers hold_for_kill)
from pipeline import workdir
from pipeline.recipe import load_recipe
from pipeline.runner import BuildOptions, run_build
from pipeline.schema import make_rows
from tests.pipeline.small_build import accounting, shards, write_inputs

RECIPE = """
name: worker-faults
seed: 5
rows_per_partition: 4
sources:
  prompts:
    kind: midjourney_prompts
    paths: [prompts.jsonl]
    steps:
      - {stage: clean_prompts, min_words: 3, max_chars: 600, blocklist: [gore, nsfw]}
      - {stage: hold_for_kill}
      - {stage: dedup_prompts, threshold: 0.8}
mix:
  global_batch: 2
  rows_per_shard: 4
  stages:
    stage1: {ratio: {generation: 1}, sources: {prompts: 1}, batches: 4}
"""


def _recipe(tmp_path):
    write_inputs(tmp_path, "http://127.0.0.1:9")  # its prompts.jsonl (16 rows: 4 partitions)
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return load_recipe(tmp_path / "recipe.yaml")


def _kill_held_worker(build, killed: list, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        fields = (build / "held.pid").read_text().split() if (build / "held.pid").exists() else []
        if len(fields) == 2:
            pid = int(fields[0])
            assert pid != os.getpid()  # a Ray worker, not this driver
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.02)


def test_worker_killed_mid_stage_is_retried_and_nothing_is_lost(tmp_path, local_ray):
    recipe = _recipe(tmp_path)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run_build(recipe, BuildOptions(out=clean))
    killed.mkdir()
    (killed / "arm").touch()
    pids: list[int] = []
    killer = threading.Thread(target=_kill_held_worker, args=(killed, pids))
    killer.start()
    try:
        run_build(recipe, BuildOptions(out=killed))
    finally:
        killer.join()
    assert pids, "no worker was held for the kill"
    retried = (killed / "retried.pid").read_text()
    assert int(retried) != pids[0]  # the held partition was redone by another worker process
    assert shards(killed) == shards(clean) and shards(clean)
    assert accounting(killed) == accounting(clean)


def test_damaged_part_is_found_by_its_marker_and_redone(tmp_path, local_ray, caplog):
    recipe = _recipe(tmp_path)
    out = tmp_path / "build"
    run_build(recipe, BuildOptions(out=out))
    before = shards(out)
    work = out / "work" / "prompts"
    cleaned = work / "01-clean_prompts" / "part-00000-00001.parquet"
    read = work / "00-midjourney_prompts" / "part-00000-00002.parquet"
    cleaned.write_bytes(cleaned.read_bytes()[:100])  # truncated in place, its marker still there
    data = bytearray(read.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    read.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="janus_forge.build"):
        run_build(recipe, BuildOptions(out=out))
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert f"{cleaned} does not match its completion marker" in warned and "committed as" in warned
    assert f"{read} does not match its completion marker" in warned and "hash differs" in warned
    assert workdir.damage(cleaned) is None and workdir.damage(read) is None  # redone and recommitted
    assert shards(out) == before
    accounting(out)


def test_disk_full_write_leaves_nothing_committed(tmp_path, monkeypatch):
    part = tmp_path / "step" / "part-00000-00000.parquet"
    monkeypatch.setenv(workdir.FAULT_ENOSPC_ENV, "*/part-00000-00000.parquet")
    with pytest.raises(workdir.DiskFullError) as err:
        workdir.write_part(part, make_rows([{"source": "s", "source_key": "k", "task": "generation", "prompt": "p"}]))
    assert err.value.errno == errno.ENOSPC and f"no space left on device while writing {part}" in str(err.value)
    assert not workdir.committed(part) and list(part.parent.iterdir()) == []  # the half-written temp file is gone
    monkeypatch.delenv(workdir.FAULT_ENOSPC_ENV)
    workdir.write_part(part, make_rows([{"source": "s", "source_key": "k", "task": "generation", "prompt": "p"}]))
    assert workdir.committed(part) and workdir.damage(part) is None
