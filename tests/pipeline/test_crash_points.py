"""SIGKILL a real build (the CLI with its own embedded Ray) at three points, rerun it, and compare
with a clean build: the same shard bytes and the same accounting of every input row. Also a disk
that fills up while a partition is written.

The photos are downloaded by img2dataset from a loopback server that can hold requests, so a kill
lands inside the download for certain rather than by timing.
"""

import duckdb
import pytest

from pipeline import workdir
from pipeline.recipe import load_recipe
from pipeline.runner import BuildOptions, run_build
from pipeline.workdir import FAULT_ENOSPC_ENV
from tests.pipeline.small_build import (
    N_PHOTOS,
    ROWS_PER_PARTITION,
    Build,
    PhotoServer,
    accounting,
    committed,
    shards,
    write_inputs,
)

PHOTO_PARTS = N_PHOTOS // ROWS_PER_PARTITION


@pytest.fixture(scope="module")
def server():
    with PhotoServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def clean(server, tmp_path_factory, local_ray):
    """The uninterrupted build, in this process on the session's Ray (the same code, one Ray start fewer)."""
    root = tmp_path_factory.mktemp("clean")
    recipe = write_inputs(root, server.base)
    run_build(load_recipe(recipe), BuildOptions(out=root / "build"))
    return root / "build", {"shards": shards(root / "build"), "accounting": accounting(root / "build")}


def _steps(build):
    photos, prompts = build / "work" / "photos", build / "work" / "prompts"
    return {"read": photos / "00-yfcc_metadata", "download": photos / "02-download_images",
            "preprocess": photos / "03-preprocess_images", "dedup": prompts / "02-dedup_prompts"}


def _killed_then_resumed(server, clean, tmp_path, arm, kill_point, check_state):
    recipe = write_inputs(tmp_path, server.base)  # the same recipe and inputs as the clean build
    out = tmp_path / "build"
    steps = _steps(out)
    arm()
    try:
        Build(recipe, out).kill_when(lambda: kill_point(steps))
    finally:
        server.open_all()
    check_state(steps)
    assert not (out / "shards").exists()
    hits = len(server.hits)
    log = Build(recipe, out).finish()
    assert shards(out) == clean[1]["shards"] and clean[1]["shards"]
    assert accounting(out) == clean[1]["accounting"]
    return log, server.hits[hits:]


@pytest.mark.slow
def test_kill_inside_the_download(server, clean, tmp_path):
    """Partition 0's photos are served and committed; the others hang at the server when the build dies."""
    log, rerun_hits = _killed_then_resumed(
        server, clean, tmp_path,
        arm=lambda: server.hold(keep_open=range(ROWS_PER_PARTITION)),
        kill_point=lambda s: committed(s["download"]) and server.waiting > 0,
        check_state=lambda s: _assert_partial(committed(s["download"]), PHOTO_PARTS))
    assert not set(rerun_hits) & set(range(ROWS_PER_PARTITION)), "a committed partition's photos were fetched again"


@pytest.mark.slow
def test_kill_between_the_read_and_the_download(server, clean, tmp_path):
    """The photos are read; every download waits at the server; nothing downloaded is committed."""
    _killed_then_resumed(
        server, clean, tmp_path,
        arm=lambda: server.hold(),
        kill_point=lambda s: (s["read"] / "_done" / "file-00000.json").exists(),
        check_state=lambda s: _assert_none(committed(s["download"])))


@pytest.mark.slow
def test_kill_after_a_later_stage(server, clean, tmp_path):
    """Photos done to the last step (preprocess); the prompts source and the mix had not finished."""
    def check(s):
        assert len(committed(s["preprocess"])) == PHOTO_PARTS
        assert len(committed(s["dedup"])) < 4
    log, rerun_hits = _killed_then_resumed(
        server, clean, tmp_path, arm=lambda: None,
        kill_point=lambda s: len(committed(s["preprocess"])) == PHOTO_PARTS, check_state=check)
    assert rerun_hits == [] and f"({PHOTO_PARTS} already done)" in log


def _assert_partial(done, total):
    assert 0 < len(done) < total, done


def _assert_none(done):
    assert done == [], done


@pytest.mark.slow
def test_disk_full_while_writing_a_partition(server, clean, tmp_path):
    """ENOSPC half way through the second partition of the photos: a clear error naming the file,
    nothing half-written counted as done; the rerun (space freed) completes and equals the clean
    build. (The read step: the cheapest partition write to fail; every step writes through the same
    function, pipeline/workdir.py write_atomic.)"""
    recipe = write_inputs(tmp_path, server.base)
    out = tmp_path / "build"
    part = out / "work" / "photos" / "00-yfcc_metadata" / "part-00000-00001.parquet"
    full = Build(recipe, out, env={FAULT_ENOSPC_ENV: f"*/{part.parent.name}/{part.name}"})
    rc = full.proc.wait(600)
    full.stop()
    log = full.output()
    assert rc != 0
    assert f"no space left on device while writing {part}" in log, log[-3000:]
    assert not workdir.committed(part) and not part.exists() and not list(part.parent.glob(f".{part.name}.*"))
    assert not workdir.file_done(part.parent, 0)  # the input file is not marked read
    con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
    status, error = con.execute("SELECT status, error FROM builds").fetchone()
    con.close()
    assert status == "failed" and "no space left" in error
    Build(recipe, out).finish()
    assert shards(out) == clean[1]["shards"]
    assert accounting(out) == clean[1]["accounting"]
