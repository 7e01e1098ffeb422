"""Resume loses no download: transient failures are retried on a rerun (bounded), permanent ones stay.

Real img2dataset against a real HTTP server on 127.0.0.1; the partitions are committed and reopened
by the runner's own code (`_RunStage`, `_reopen`) without starting Ray.
"""

import io
import os
import socket

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import workdir
from pipeline.runner import _reopen, _RunStage
from pipeline.schema import make_rows
from stages.base import Stage, StageContext
from stages.download import ATTEMPTS, TRANSIENT, DownloadImages
from stages.download_errors import is_blocked, is_transient
from tests.stages.loopback import LoopbackServer, QuietHandler
from tests.stages.loopback import jpeg as _jpeg


def jpeg(w, h) -> bytes:
    return _jpeg(w, h, (10, 200, 30))


class Server(LoopbackServer):
    """Serves `files`; paths in `unavailable` answer 503 until the test heals them."""

    def __init__(self, files: dict[str, bytes], port: int = 0, unavailable: set[str] = frozenset()):
        self.hits: list[str] = []
        self.unavailable = set(unavailable)
        outer = self

        class Handler(QuietHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                if self.path in outer.unavailable:
                    self.send_error(503)
                    return
                self.send_body(files.get(self.path))

        super().__init__(Handler, port=port)


def free_port() -> int:
    """A loopback port nothing listens on (connections are refused until a server takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(urls: dict[str, str]) -> pa.Table:
    return make_rows([{"source": "yfcc", "source_key": k, "task": "understanding", "meta": {"url": u}} for k, u in urls.items()])


def make_stage(tmp_path, **kw) -> DownloadImages:
    ctx = StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="yfcc", task="understanding", build_dir=tmp_path / "build")
    s = DownloadImages(DownloadImages.Config(stage="download_images", resolution=16, timeout=2, allow_networks=["127.0.0.1/32"], **kw), ctx)
    s.preflight()
    return s


class After(Stage):
    """Stands for the steps after the download (their outputs must go when it is reopened)."""

    name = "after"


@pytest.mark.parametrize(
    ("status", "message", "transient"),
    [
        ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", True),
        ("failed_to_download", "[Errno 104] Connection reset by peer", True),
        ("failed_to_download", "timed out", True),
        ("failed_to_download", "The read operation timed out", True),
        ("failed_to_download", "Remote end closed connection without response", True),
        ("failed_to_download", "<urlopen error [Errno -3] Temporary failure in name resolution>", True),
        ("failed_to_download", "HTTP Error 429: Too Many Requests", True),
        ("failed_to_download", "HTTP Error 500: Internal Server Error", True),
        ("failed_to_download", "HTTP Error 503: Service Unavailable", True),
        ("failed_to_download", "HTTP Error 408: Request Timeout", True),
        ("failed_to_download", "IncompleteRead(10 bytes read, 90 more expected)", True),
        ("failed_to_download", "<urlopen error Tunnel connection failed: 502 Bad Gateway>", True),
        ("failed_to_download", None, True),  # nothing said: assume a fault, the bound stops it
        ("failed_to_download", "HTTP Error 404: Not Found", False),
        ("failed_to_download", "HTTP Error 410: Gone", False),
        ("failed_to_download", "HTTP Error 403: Forbidden", False),
        ("failed_to_download", "unknown url type: 'local.test/x.jpg'", False),
        ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>", False),
        ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", False),
        ("failed_to_download", "<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed>", False),
        ("failed_to_download", "HTTP Error 403: egress guard refused 127.0.0.2: not an allowed address", False),
        ("failed_to_download", "HTTP Error 502: egress proxy: unknown host nope.invalid", False),
        ("failed_to_download", "HTTP Error 504: egress proxy: temporary failure resolving x.test: [Errno -3]", True),
        ("failed_to_download", "HTTP Error 502: egress proxy: cannot connect to x.test: [Errno 111] Connection refused", True),
        ("failed_to_resize", "cannot identify image file", False),
        ("success", None, False),
    ],
)
def test_error_classification(status, message, transient):
    assert is_transient(status, message) is transient


def test_guard_refusals_are_recognised():
    assert is_blocked("<urlopen error Tunnel connection failed: 403 egress guard refused 10.0.0.1>")
    assert not is_blocked("HTTP Error 403: Forbidden") and not is_blocked(None)


def test_reopen_is_bounded_by_max_attempts(tmp_path):
    s = make_stage(tmp_path, max_attempts=2)
    part = tmp_path / "part.parquet"

    def write(reason, detail, attempts):
        t = make_rows([{"source": "yfcc", "source_key": "k", "task": "understanding", "status": "failed", "reason": reason, "detail": detail}])
        pq.write_table(t.append_column(ATTEMPTS, pa.array([attempts], ATTEMPTS.type)), part)

    write(TRANSIENT, "HTTP Error 503: Service Unavailable [attempt 1 of 2]", 1)
    assert s.reopen(part)
    write(TRANSIENT, "HTTP Error 503: Service Unavailable [attempt 2 of 2]", 2)
    assert not s.reopen(part)  # the bound reached: final
    write("download_failed", "HTTP Error 404: Not Found", 1)
    assert not s.reopen(part)
    # a work file from before transient failures had their own reason: judged by its message
    pq.write_table(make_rows([{"source": "yfcc", "source_key": "k", "task": "understanding", "status": "failed",
                               "reason": "download_failed", "detail": "<urlopen error [Errno 111] Connection refused>"}]), part)
    assert s.reopen(part)


def test_rerun_retries_transient_failures_and_keeps_final_ones(tmp_path):
    """Run 1: 503 and connection refused → transient. Rerun with a healthy server → kept, attempt 2; 404 final."""
    root = tmp_path / "build" / "work" / "yfcc"
    in_dir, out_dir, after_dir = root / "00-read", root / "01-download_images", root / "02-after"
    part = "part-00000-00000.parquet"
    refused_port = free_port()
    files = {"/a.jpg": jpeg(32, 16), "/b.jpg": jpeg(16, 32), "/c.jpg": jpeg(20, 20)}
    with Server(files, unavailable={"/b.jpg"}) as srv:
        urls = {"a": f"{srv.base}/a.jpg", "b": f"{srv.base}/b.jpg", "c": f"http://127.0.0.1:{refused_port}/c.jpg", "d": f"{srv.base}/d.jpg"}
        workdir.write_part(in_dir / part, rows(urls))
        stage = make_stage(tmp_path)
        _RunStage(stage, in_dir, out_dir)({"part": [part]})
        first = {r["source_key"]: r for r in pq.read_table(out_dir / part).to_pylist()}
        assert first["a"]["status"] == "kept" and first["a"][ATTEMPTS.name] == 1
        assert (first["b"]["reason"], first["c"]["reason"]) == (TRANSIENT, TRANSIENT)
        assert "503" in first["b"]["detail"] and "Connection refused" in first["c"]["detail"]
        assert first["b"]["detail"].endswith("[attempt 1 of 3]")
        assert (first["d"]["reason"], "404" in first["d"]["detail"]) == ("download_failed", True)
        assert list(scratch_root(tmp_path).iterdir()) == []  # committed: img2dataset's copy is gone
        workdir.write_part(after_dir / part, rows({}))  # a later step had committed this partition too

        # the rerun of the build: the runner asks the stage, which reopens the partition
        rerun_stage = make_stage(tmp_path)
        _reopen([rerun_stage, After(None, None)], root, [part], "yfcc")
        assert not (out_dir / part).exists() and not (after_dir / part).exists()
        assert workdir.previous_output(out_dir, part).exists()
        srv.unavailable.clear()
        hits_before = list(srv.hits)
        with Server(files, port=refused_port) as healed:
            _RunStage(rerun_stage, in_dir, out_dir)({"part": [part]})
        assert sorted(srv.hits[len(hits_before):]) == ["/b.jpg"]  # a (kept) and d (404) were not asked again
        assert healed.hits == ["/c.jpg"]
    second = {r["source_key"]: r for r in pq.read_table(out_dir / part).to_pylist()}
    assert [second[k]["status"] for k in "abcd"] == ["kept", "kept", "kept", "failed"]
    assert [second[k][ATTEMPTS.name] for k in "abcd"] == [1, 2, 2, 1]
    assert second["a"]["image"] == first["a"]["image"]  # kept as it was, not fetched again
    assert (second["b"]["width"], second["b"]["height"]) == (8, 16)
    assert second["d"]["reason"] == "download_failed"
    assert pq.read_table(out_dir / part).column("sample_id").to_pylist() == rows(urls).column("sample_id").to_pylist()
    assert not workdir.previous_output(out_dir, part).exists()
    assert not rerun_stage.reopen(out_dir / part)  # nothing retryable left: the next rerun skips it
    assert list(scratch_root(tmp_path).iterdir()) == []
    # a crash between the redo's commit and its cleanup: the next rerun drops the leftover
    workdir.write_part(workdir.previous_output(out_dir, part), rows({}))
    _reopen([rerun_stage], root, [part], "yfcc")
    assert (out_dir / part).exists() and not workdir.previous_output(out_dir, part).exists()


def scratch_root(tmp_path):
    return tmp_path / "build" / "work" / "yfcc" / "scratch" / "download"


def test_scratch_is_removed_once_the_partition_commits(tmp_path):
    """Downloaded images are stored once: in the committed partition, not also in img2dataset's output."""
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    part = "part-00000-00000.parquet"
    files = {f"/{i}.jpg": jpeg(20 + i, 10) for i in range(4)}
    with Server(files) as srv:
        workdir.write_part(in_dir / part, rows({str(i): f"{srv.base}/{i}.jpg" for i in range(4)}))
        stage = make_stage(tmp_path, number_sample_per_shard=2)
        real_commit = stage.committed
        seen = []
        stage.committed = lambda: (seen.extend(p.name for p in scratch_root(tmp_path).rglob("*.parquet")), real_commit())
        _RunStage(stage, in_dir, out_dir)({"part": [part]})
        assert sorted(seen) == ["00000.parquet", "00001.parquet", "urls.parquet"]  # there until the commit
        assert list(scratch_root(tmp_path).iterdir()) == []
        n = len(srv.hits)
        _RunStage(make_stage(tmp_path, number_sample_per_shard=2), in_dir, out_dir)({"part": [part]})
        assert len(srv.hits) == n == 4  # a rerun skips the committed partition: nothing fetched again
    out = pq.read_table(out_dir / part)
    assert out.column("status").to_pylist() == ["kept"] * 4
    sizes = [Image.open(io.BytesIO(img["bytes"])).size for img in out.column("image").to_pylist()]
    assert sizes == list(zip(out.column("width").to_pylist(), out.column("height").to_pylist())) and {w for w, _ in sizes} == {16}


def test_crash_before_commit_retries_the_reused_transient_rows(tmp_path):
    """img2dataset shards a crashed run finished are reused, but their transient failures are tried again."""
    files = {"/a.jpg": jpeg(32, 16), "/b.jpg": jpeg(16, 32)}
    with Server(files, unavailable={"/b.jpg"}) as srv:
        table = rows({"a": f"{srv.base}/a.jpg", "b": f"{srv.base}/b.jpg"})
        crashed = make_stage(tmp_path).run(table)  # processed, never committed: the worker died
        assert crashed.column("reason").to_pylist() == [None, TRANSIENT]
        n = len(srv.hits)
        srv.unavailable.clear()
        out = make_stage(tmp_path).run(table)
        assert srv.hits[n:] == ["/b.jpg"]  # a came from the reused shard
    assert out.column("status").to_pylist() == ["kept", "kept"]
    assert out.column(ATTEMPTS.name).to_pylist() == [1, 2]


def test_row_without_result_is_transient(tmp_path):
    s = make_stage(tmp_path)
    status, reason, detail = s._verdict(None, 1)
    assert (status, reason) == ("failed", TRANSIENT) and "no row" in detail


BUILD_RECIPE = """
name: download-resume
seed: 3
rows_per_partition: 4
sources:
  photos:
    kind: yfcc_metadata
    paths: [photos.tsv]
    steps:
      - {{stage: yfcc_captions, licenses: [Attribution License]}}
      - {{stage: download_images, resolution: 16, timeout: 3, allow_networks: [127.0.0.1/32]}}
      - {{stage: preprocess_images, mode: understanding, resolution: 16}}
mix:
  global_batch: 2
  rows_per_shard: 4
  stages:
    stage2: {{ratio: {{understanding: 1}}, sources: {{photos: 1}}, batches: 3}}
"""


@pytest.mark.slow  # three real builds on the session's local Ray, img2dataset in each
def test_build_rerun_after_transient_failures_matches_a_clean_build(tmp_path, local_ray):
    """A build whose server is down for some photos, rerun healed, writes the shards a clean build writes."""
    from urllib.parse import quote_plus

    from pipeline.recipe import load_recipe
    from pipeline.runner import BuildOptions, run_build
    from stages.yfcc import format_line

    files = {f"/{i}.jpg": jpeg(20 + 3 * i, 12 + i) for i in range(8)}
    with Server(files, unavailable={"/1.jpg", "/4.jpg", "/6.jpg"}) as srv:
        urls = [f"{srv.base}/{i}.jpg" for i in range(8)] + [f"{srv.base}/gone.jpg"]
        with open(tmp_path / "photos.tsv", "w") as fh:
            for i, url in enumerate(urls):
                fh.write(format_line({"line": i, "id": str(i), "title": quote_plus(f"A red boat number {i} on the sea"), "url": url,
                                      "license": quote_plus("Attribution License"), "marker": "0"}))
        (tmp_path / "recipe.yaml").write_text(BUILD_RECIPE.format())
        recipe = load_recipe(tmp_path / "recipe.yaml")
        resumed, clean = tmp_path / "resumed", tmp_path / "clean"
        run_build(recipe, BuildOptions(out=resumed))
        step = resumed / "work" / "photos" / "02-download_images"
        first = pa.concat_tables([pq.read_table(p) for p in sorted(step.glob("*.parquet"))]).to_pylist()
        assert sorted(r["source_key"] for r in first if r["reason"] == TRANSIENT) == ["1", "4", "6"]
        srv.unavailable.clear()
        run_build(recipe, BuildOptions(out=resumed))  # the rerun: only the three are fetched again
        run_build(recipe, BuildOptions(out=clean))
    second = {r["source_key"]: r for p in sorted(step.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
    assert {k: (r["status"], r[ATTEMPTS.name]) for k, r in second.items() if k in "146"} == {k: ("kept", 2) for k in "146"}
    assert second["8"]["reason"] == "download_failed"  # the 404 (gone.jpg) stayed final
    assert not list(step.glob("_previous/*")) and not list((resumed / "work" / "photos" / "scratch" / "download").iterdir())

    def shards(build):
        return {p.relative_to(build).as_posix(): p.read_bytes() for p in sorted((build / "shards").rglob("shard-*.parquet"))}

    assert shards(resumed) and shards(resumed) == shards(clean)
    # the shards are an index: the rows they point at must match too (the healed payload included)
    from model.shards import ShardSet

    def rows(build):
        return [(r["sample_id"], r["image"]["bytes"]) for r in ShardSet.open(build, "stage2").iter_rows()]

    assert rows(resumed) == rows(clean) and len(rows(clean)) == 6
