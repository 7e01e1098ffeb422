"""download_images runs the real img2dataset against a real HTTP server on 127.0.0.1."""

import io
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pyarrow as pa
import pytest
from PIL import Image

from pipeline.schema import make_rows
from stages.base import StageContext, StageError
from stages.download import DownloadImages, serve_directory
from tests.stages.loopback import LoopbackServer, QuietHandler, jpeg


class Server(LoopbackServer):
    """Serves a fixed set of paths; /slow sleeps past the client timeout."""

    def __init__(self, files: dict[str, bytes]):
        self.hits: list[str] = []
        outer = self

        class Handler(QuietHandler):
            def do_GET(self):
                outer.hits.append(self.path)
                if self.path == "/slow.jpg":
                    time.sleep(3)
                self.send_body(files.get(self.path))

        super().__init__(Handler)


def rows(urls: dict[str, str]):
    return make_rows([{"source": "yfcc", "source_key": k, "task": "understanding", "meta": {"url": u, "caption": f"c {k}"}} for k, u in urls.items()])


def stage(tmp_path, **kw):
    ctx = StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="yfcc", task="understanding", build_dir=tmp_path / "build")
    s = DownloadImages(DownloadImages.Config(stage="download_images", **kw), ctx)
    s.preflight()
    return s


def test_successes_failures_and_blocked(tmp_path):
    good = jpeg(64, 32)
    files = {"/a.jpg": good, "/b.jpg": jpeg(20, 40), "/slow.jpg": good, "/text.jpg": b"<html>not an image</html>", "/trunc.jpg": good[: len(good) // 3]}
    with Server(files) as srv:
        urls = {"a": f"{srv.base}/a.jpg", "b": f"{srv.base}/b.jpg", "missing": f"{srv.base}/missing.jpg",
                "slow": f"{srv.base}/slow.jpg", "text": f"{srv.base}/text.jpg", "trunc": f"{srv.base}/trunc.jpg",
                "private": "http://10.0.0.7/x.jpg", "meta": "http://169.254.169.254/latest/", "file": "file:///etc/passwd"}
        out = stage(tmp_path, resolution=16, timeout=1, allow_networks=["127.0.0.1/32"]).run(rows(urls))
        assert not any("10.0.0.7" in h for h in srv.hits)
    got = {r["source_key"]: r for r in out.to_pylist()}
    assert len(got) == len(urls)  # every row accounted for
    assert got["a"]["status"] == "kept" and (got["a"]["width"], got["a"]["height"]) == (16, 8)
    assert Image.open(io.BytesIO(got["a"]["image"]["bytes"])).size == (16, 8)  # long side to resolution
    assert (got["b"]["width"], got["b"]["height"]) == (8, 16)
    assert (got["missing"]["reason"], "404" in got["missing"]["detail"]) == ("download_failed", True)
    # a timeout may pass: retried on resume, not final (tests/stages/test_download_resume.py)
    assert got["slow"]["reason"] == "download_transient" and "timed out" in got["slow"]["detail"]
    assert got["slow"]["download_attempts"] == 1
    # the one decoder (stages/image_checks.py) decodes what img2dataset fetched
    assert got["text"]["reason"] == "undecodable_image" and "starts with b'<html>" in got["text"]["detail"]
    assert got["trunc"]["status"] == "failed" and got["trunc"]["reason"] in ("truncated_image", "undecodable_image")  # cut in the headers
    for key in ("private", "meta"):
        assert (got[key]["status"], got[key]["reason"]) == ("failed", "blocked_address")
    assert (got["file"]["reason"], got["file"]["detail"]) == ("bad_url", "scheme 'file' is not http(s): file:///etc/passwd")


def test_loopback_refused_by_default_and_bad_meta_recorded(tmp_path):
    from pipeline.schema import make_rows as mk

    table = mk([{"source": "yfcc", "source_key": "bad", "task": "understanding", "meta": "not json"},
                {"source": "yfcc", "source_key": "list", "task": "understanding", "meta": "[1]"},
                {"source": "yfcc", "source_key": "nourl", "task": "understanding", "meta": {"caption": "x"}}])
    with Server({"/a.jpg": jpeg(8, 8)}) as srv:
        out = stage(tmp_path).run(pa.concat_tables([rows({"a": f"{srv.base}/a.jpg"}), table]))
        assert srv.hits == []
    assert out.column("reason").to_pylist() == ["blocked_address", "bad_meta", "bad_meta", "no_url"]


def test_rerun_reuses_finished_shards(tmp_path):
    files = {f"/{i}.jpg": jpeg(10 + i, 10) for i in range(6)}
    with Server(files) as srv:
        table = rows({str(i): f"{srv.base}/{i}.jpg" for i in range(6)})
        s = stage(tmp_path, resolution=32, allow_networks=["127.0.0.1"], number_sample_per_shard=2)
        first = s.run(table)
        n = len(srv.hits)
        scratch = next((tmp_path / "build" / "work" / "yfcc" / "scratch" / "download").iterdir())
        stats = sorted(p.name for p in (scratch / "out").glob("*_stats.json"))
        assert stats == ["00000_stats.json", "00001_stats.json", "00002_stats.json"]
        # an interrupted run: one shard never finished
        (scratch / "out" / "00001_stats.json").unlink()
        (scratch / "out" / "00001.parquet").unlink()
        second = s.run(table)
        assert len(srv.hits) == n + 2  # only the unfinished shard's two URLs were fetched again
    assert second.column("status").to_pylist() == ["kept"] * 6
    assert second.column("image").to_pylist() == first.column("image").to_pylist()


def test_local_http_root_serves_recipe_files(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.jpg").write_bytes(jpeg(30, 10))
    s = stage(tmp_path, resolution=15, local_http_root="imgs", allow_networks=["127.0.0.1/32"])
    out = s.run(rows({"x": "http://local.test/x.jpg", "y": "http://local.test/nope.jpg"}))
    assert out.column("status").to_pylist() == ["kept", "failed"]
    assert (out.column("width")[0].as_py(), out.column("height")[0].as_py()) == (15, 5)


def test_preflight_errors(tmp_path):
    with pytest.raises(StageError, match="local_http_root"):
        stage(tmp_path, local_http_root="nope")
    ctx = StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="s", task="understanding")
    with pytest.raises(StageError, match="build directory"):
        DownloadImages(DownloadImages.Config(stage="download_images"), ctx).preflight()


def test_serve_directory_shuts_down(tmp_path):
    (tmp_path / "f.txt").write_text("hi")
    import urllib.request

    with serve_directory(tmp_path) as base:
        assert urllib.request.urlopen(base + "f.txt", timeout=5).read() == b"hi"
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "f.txt", timeout=2)


def test_downloader_crash_stops_the_stage(tmp_path, monkeypatch):
    import stages.download as mod

    def boom(*args):
        raise RuntimeError("pool died")

    monkeypatch.setattr(mod, "_run_img2dataset", boom)
    s = stage(tmp_path, allow_networks=["127.0.0.1/32"])
    with pytest.raises(StageError, match="pool died"):
        s.run(rows({"a": "http://127.0.0.1:9/a.jpg", "b": "http://127.0.0.1:9/b.jpg"}))
