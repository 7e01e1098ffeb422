"""Fetch images with img2dataset (parquet output, incremental) and join its per-row status back."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path
from typing import Iterator, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from pipeline.schema import IMAGE_TYPE, STATUS_FAILED, STATUS_KEPT, conform
from stages.base import Resources, Stage, StageConfig, StageError, register, with_verdicts
from stages.netguard import UrlGuard

# img2dataset's status string -> our reason for a failed row
REASONS = {"failed_to_download": "download_failed", "failed_to_resize": "resize_failed"}


class DownloadConfig(StageConfig):
    resolution: int = Field(384, gt=0, description="img2dataset image_size")
    # keep_ratio_largest: long side to `resolution`, no crop, so preprocess_images can pad
    resize_mode: Literal["keep_ratio_largest", "keep_ratio", "center_crop", "border", "no"] = "keep_ratio_largest"
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=1, le=100)
    processes_count: int = Field(1, ge=1)
    thread_count: int = Field(16, ge=1)
    timeout: int = Field(10, ge=1, description="seconds per request")
    retries: int = Field(0, ge=0)
    number_sample_per_shard: int = Field(1000, gt=0, description="img2dataset shard: its unit of resume")
    min_image_size: int = 0
    # networks the recipe trusts although they are not public (tests: ["127.0.0.1/32"])
    allow_networks: list[str] = []
    # repro without internet: serve this directory (relative to the recipe) on 127.0.0.1 and
    # rewrite URLs that start with `local_http_prefix` to it
    local_http_root: str | None = None
    local_http_prefix: str = "http://local.test/"


@register
class DownloadImages(Stage):
    """Kept rows with meta.url get image/width/height; img2dataset failures become failed rows."""

    name = "download_images"
    Config = DownloadConfig
    needs = ("meta",)
    adds = ("image", "width", "height")
    batch_size = 4096

    def resources(self) -> Resources:
        return Resources(cpus=float(self.config.processes_count))

    def preflight(self) -> None:
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        if self.context.build_dir is None:
            raise StageError("download_images needs a build directory for img2dataset's scratch output")
        if self.config.local_http_root and not self._local_root().is_dir():
            raise StageError(f"download_images.local_http_root: {self._local_root()} is not a directory")

    def setup(self) -> None:
        self.guard = UrlGuard(self.config.allow_networks)

    def _local_root(self) -> Path:
        return (self.context.recipe_dir / self.config.local_http_root).resolve()

    def process(self, batch: pa.Table) -> pa.Table:
        ids = batch.column("sample_id").to_pylist()
        metas = batch.column("meta").to_pylist()
        statuses = batch.column("status").to_pylist()
        old = list(zip(statuses, batch.column("reason").to_pylist(), batch.column("detail").to_pylist()))
        verdicts: list = list(old)
        wanted: dict[str, str] = {}  # sample_id -> url, the rows img2dataset will see
        with self._local_server() as rewrite:
            for i, (sid, meta_s, status) in enumerate(zip(ids, metas, statuses)):
                if status != STATUS_KEPT:
                    continue
                try:  # a bad row must not raise: the base would retry the batch row by row, one img2dataset run each
                    url = rewrite(str(json.loads(meta_s or "{}").get("url") or ""))
                except (ValueError, AttributeError) as err:
                    verdicts[i] = (STATUS_FAILED, "bad_meta", f"meta is not a JSON object: {err}"[:300])
                    continue
                if not url:
                    verdicts[i] = (STATUS_FAILED, "no_url", "meta has no url")
                elif why := self.guard.refuse(url):
                    verdicts[i] = (STATUS_FAILED, "blocked_address", why)  # never requested
                else:
                    wanted[sid] = url
            results = self._download(wanted) if wanted else {}
        images, widths, heights = [], [], []
        image_col, w_col, h_col = (batch.column(c).to_pylist() for c in ("image", "width", "height"))
        for i, sid in enumerate(ids):
            res = results.get(sid)
            if sid in wanted and res is None:
                verdicts[i] = (STATUS_FAILED, "download_missing", "img2dataset wrote no row for this sample")
            elif res is not None and res["status"] != "success":
                verdicts[i] = (STATUS_FAILED, REASONS.get(res["status"], res["status"]), res["error_message"])
            elif res is not None:
                image_col[i] = {"bytes": res[self.config.encode_format], "path": f"{sid}.{self.config.encode_format}"}
                w_col[i], h_col[i] = res["width"], res["height"]
            images.append(image_col[i]), widths.append(w_col[i]), heights.append(h_col[i])
        out = with_verdicts(batch, verdicts)
        for name, values, typ in (("image", images, IMAGE_TYPE), ("width", widths, pa.int32()), ("height", heights, pa.int32())):
            out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, typ))
        return conform(out)

    def _download(self, wanted: dict[str, str]) -> dict[str, dict]:
        """Run img2dataset in the batch's own scratch dir; a rerun reuses its finished shards."""
        digest = hashlib.sha256("\n".join(sorted(wanted)).encode()).hexdigest()[:16]
        scratch = Path(self.context.build_dir) / "work" / self.context.source / "scratch" / "download" / digest
        scratch.mkdir(parents=True, exist_ok=True)
        url_list = scratch / "urls.parquet"
        if not url_list.exists():  # same ids -> same list: shard numbering stays stable on resume
            tmp = url_list.with_suffix(".tmp")
            pq.write_table(pa.table({"url": list(wanted.values()), "sample_id": list(wanted)}), tmp)
            tmp.rename(url_list)
        cfg = self.config
        try:
            with _quiet():
                _run_img2dataset(url_list, scratch / "out", cfg)
        except Exception as err:  # a crash of the downloader itself, not a bad URL: stop, don't isolate rows
            raise StageError(f"img2dataset failed in {scratch}: {err}") from err
        return {row["sample_id"]: row for row in _read_shards(scratch / "out", cfg.encode_format)}

    @contextlib.contextmanager
    def _local_server(self) -> Iterator:
        if not self.config.local_http_root:
            yield lambda url: url
            return
        with serve_directory(self._local_root()) as base:
            prefix = self.config.local_http_prefix
            yield lambda url: base + url[len(prefix):] if url.startswith(prefix) else url


def _run_img2dataset(url_list: Path, output: Path, cfg: DownloadConfig) -> None:
    from img2dataset import download  # heavy import (cv2, albumentations): only where it runs

    # retries and timeout come from the recipe; X-Robots-Tag opt-outs are honoured (img2dataset default)
    download(
        url_list=str(url_list), input_format="parquet", url_col="url", save_additional_columns=["sample_id"],
        output_format="parquet", output_folder=str(output), incremental_mode="incremental",
        image_size=cfg.resolution, resize_mode=cfg.resize_mode, resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_format=cfg.encode_format, encode_quality=cfg.encode_quality, processes_count=cfg.processes_count,
        thread_count=cfg.thread_count, timeout=cfg.timeout, retries=cfg.retries,
        number_sample_per_shard=cfg.number_sample_per_shard, min_image_size=cfg.min_image_size,
        distributor="multiprocessing", extract_exif=False, enable_wandb=False,
    )


def _read_shards(folder: Path, encode_format: str) -> Iterator[dict]:
    cols = ["sample_id", "status", "error_message", "width", "height", encode_format]
    for shard in sorted(folder.glob("*.parquet")):
        yield from pq.read_table(shard, columns=cols).to_pylist()


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """A throwaway HTTP server on 127.0.0.1 (ephemeral port) serving `root`; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # request lines would drown the build log
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def _quiet():
    # img2dataset prints progress per shard; keep the build log to our own lines
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
