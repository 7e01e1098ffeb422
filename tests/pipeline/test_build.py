"""The build runner on a real local Ray: catalog accounting, resume after SIGKILL, recipe hash, job submit."""

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

from model.shards import ShardSet
from pipeline.recipe import load_recipe
from pipeline.runner import BuildError, BuildOptions, run_build

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "data" / "tiny.yaml"


PROMPTS_RECIPE = """
name: prompts
seed: 1234
rows_per_partition: {rows}
sources:
  mj_prompts:
    kind: midjourney_prompts
    paths: [tiny/midjourney_prompts.jsonl]
    steps:
      - {{stage: clean_prompts, min_words: 3, max_chars: 600, blocklist: [gore, nsfw]}}
      - {{stage: dedup_prompts, threshold: {threshold}}}
mix:
  global_batch: 16
  rows_per_shard: 64
  stages:
    stage1: {{ratio: {{generation: 1}}, sources: {{mj_prompts: 1}}, batches: 8}}
"""


def _recipe(tmp_path: Path, rows_per_partition: int = 256, threshold: float = 0.8) -> Path:
    """A prompts-only recipe over the tiny prompt file, beside a copy of it so paths resolve."""
    (tmp_path / "tiny").mkdir(exist_ok=True)
    shutil.copy(TINY.parent / "tiny" / "midjourney_prompts.jsonl", tmp_path / "tiny")
    path = tmp_path / "prompts.yaml"
    path.write_text(PROMPTS_RECIPE.format(rows=rows_per_partition, threshold=threshold))
    return path


def _shards(build: Path) -> dict[str, bytes]:
    return {str(p.relative_to(build)): p.read_bytes() for p in sorted((build / "shards").glob("*/shard-*.parquet"))}


def test_build_accounts_for_every_row_and_rebuild_is_a_no_op(tmp_path, local_ray):
    recipe = load_recipe(_recipe(tmp_path))
    out = tmp_path / "build"
    build_id = run_build(recipe, BuildOptions(out=out))
    con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT status, attempts FROM builds WHERE id = ?", [build_id]).fetchone() == ("succeeded", 1)
    runs = con.execute("SELECT stage, rows_read, rows_in, rows_kept, rows_filtered, rows_failed FROM stage_runs ORDER BY step").fetchall()
    assert [r[0] for r in runs] == ["midjourney_prompts", "clean_prompts", "dedup_prompts"]
    for stage, read, rows_in, kept, filtered, failed in runs:
        assert rows_in == kept + filtered + failed, stage
    assert runs[1][1] == runs[0][3] and runs[2][1] == runs[1][3]  # each stage reads what the last kept
    input_lines = len((tmp_path / "tiny" / "midjourney_prompts.jsonl").read_bytes().splitlines())
    assert runs[0][2] == input_lines
    rejected = con.execute("SELECT count(*) FROM rejections").fetchone()[0]
    assert rejected == sum(r[4] + r[5] for r in runs)
    assert con.execute("SELECT count(*) FROM rejections WHERE reason IS NULL").fetchone()[0] == 0
    # shards: exactly batches x global batch, all kept by the last stage, recorded with hashes
    n, distinct = con.execute("SELECT count(*), count(DISTINCT sample_id) FROM samples WHERE training_stage = 'stage1'").fetchone()
    assert n == 8 * 16 and distinct == n
    assert con.execute("SELECT count(*) FROM samples s JOIN rejections r USING (sample_id)").fetchone()[0] == 0
    assert con.execute("SELECT sum(rows) FROM shards").fetchone()[0] == n
    con.close()
    before = _shards(out)
    run_build(recipe, BuildOptions(out=out))
    assert _shards(out) == before
    # a lost index shard is rewritten by its Ray task, the other is not touched
    kept, lost = out / "shards" / "stage1" / "shard-00000.parquet", out / "shards" / "stage1" / "shard-00001.parquet"
    mtime = kept.stat().st_mtime_ns
    lost.unlink()
    run_build(recipe, BuildOptions(out=out))
    assert _shards(out) == before and kept.stat().st_mtime_ns == mtime


def test_changed_recipe_is_refused_unless_restart(tmp_path, local_ray):
    out = tmp_path / "build"
    run_build(load_recipe(_recipe(tmp_path)), BuildOptions(out=out))
    changed = load_recipe(_recipe(tmp_path, threshold=0.6))
    with pytest.raises(BuildError, match="another recipe version"):
        run_build(changed, BuildOptions(out=out))
    run_build(changed, BuildOptions(out=out, restart=True))
    con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM builds WHERE status = 'succeeded'").fetchone()[0] == 2
    con.close()


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_matches_a_clean_build(tmp_path):
    recipe = _recipe(tmp_path, rows_per_partition=4)  # ~150 partitions: the stage takes seconds
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    proc = _cli("build", str(recipe), "--out", str(killed))
    stage_dir = killed / "work" / "mj_prompts" / "01-clean_prompts"
    deadline = time.time() + 120
    while time.time() < deadline and not (stage_dir.exists() and any(stage_dir.glob("part-*.parquet"))):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, mid-stage
    proc.wait()
    partial = len(list(stage_dir.glob("part-*.parquet")))
    total = len(list((killed / "work" / "mj_prompts" / "00-midjourney_prompts").glob("part-*.parquet")))
    assert 0 < partial < total, "the kill should land mid-stage"
    assert not (killed / "shards").exists()
    resumed = _cli("build", str(recipe), "--out", str(killed))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"({partial} already done)" in out
    subprocess.run([sys.executable, "-m", "pipeline", "build", str(recipe), "--out", str(clean)], cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, capture_output=True)
    assert _shards(killed) == _shards(clean) and _shards(clean)
    ids = lambda build: [r["sample_id"] for r in ShardSet.open(build, "stage1").iter_rows()]  # noqa: E731
    assert ids(killed) == ids(clean) and len(ids(clean)) == 128
    con = duckdb.connect(str(killed / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT status, attempts FROM builds").fetchone() == ("succeeded", 2)
    con.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "ray start --head exited early"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard did not open port {port}")


@pytest.mark.slow
def test_ray_job_submit_against_a_real_head(tmp_path):
    """`ray start --head` on 127.0.0.1 with token auth, `ray job submit` a build, check the catalog."""
    bin_dir = Path(sys.executable).parent
    ray_tmp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))  # Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_TMPDIR": str(ray_tmp)}
    port, dash, agent, client = (_free_port() for _ in range(4))
    # --block keeps the head in this process group, so stopping it touches no other Ray here
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=2",
                             # fixed defaults (52365, 10001) would collide with another Ray on this machine
                             f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}",
                             "--include-dashboard=true", f"--temp-dir={ray_tmp}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(dash, head, timeout=120)
        recipe, out = _recipe(tmp_path), tmp_path / "job-build"
        submit = ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
                  "--", "python", "-m", "pipeline", "build", str(recipe), "--out", str(out)]
        deadline = time.time() + 60  # the dashboard port opens before the head's job agent is ready
        while True:
            job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
            if "No available agent to submit job" not in job.stdout + job.stderr or time.time() > deadline:
                break
            time.sleep(2)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
        con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
        assert con.execute("SELECT status FROM builds").fetchone() == ("succeeded",)
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == 128
        con.close()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_catalog_cli_and_duckdb_cli_read_the_same_file(tmp_path, local_ray):
    out = tmp_path / "build"
    run_build(load_recipe(_recipe(tmp_path)), BuildOptions(out=out))
    sql = "SELECT stage, rows_kept FROM stage_runs ORDER BY step"
    ours = subprocess.run([sys.executable, "-m", "pipeline", "catalog", str(out), sql], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert ours.returncode == 0, ours.stderr
    duck = subprocess.run([str(Path(sys.executable).parent / "duckdb"), "-readonly", "-csv", str(out / "catalog.duckdb"), "-c", sql],
                          capture_output=True, text=True)
    assert duck.returncode == 0, duck.stderr
    for line in duck.stdout.strip().splitlines()[1:]:
        stage, kept = line.split(",")
        assert re.search(rf"{stage}\s*\|\s*{kept}", ours.stdout)
