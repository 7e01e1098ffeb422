"""Fetch images with img2dataset (parquet output, incremental) and join its per-row status back."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, PositiveInt

from pipeline.schema import IMAGE_TYPE, STATUS_FAILED, STATUS_KEPT, conform
from stages.base import Resources, Stage, StageConfig, StageError, register, with_verdicts
from stages.download_errors import is_blocked, is_transient
from stages.download_resize import stored_image
from stages.egress_proxy import EgressProxy, proxy_environment
from stages.image_checks import PIL_DEFAULT_MAX_PIXELS, ImageRejected
from stages.netguard import UrlGuard, malformed

# img2dataset's status string -> our reason for a row that failed for good
REASONS = {"failed_to_download": "download_failed", "failed_to_resize": "resize_failed"}
# a failure a crash or a passing fault can cause (stages/download_errors.py): retried on resume
TRANSIENT = "download_transient"
# work-only column: how many downloader runs tried the row (null: never requested)
ATTEMPTS = pa.field("download_attempts", pa.int32())


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
    retries: int = Field(0, ge=0, description="img2dataset's immediate retries within one attempt")
    max_attempts: int = Field(3, ge=1, description="downloader runs per row before a transient failure is final")
    number_sample_per_shard: int = Field(1000, gt=0, description="img2dataset shard: its unit of resume")
    min_image_size: int = Field(0, ge=0, description="images whose short side is smaller fail as too_small")
    max_image_pixels: PositiveInt = Field(PIL_DEFAULT_MAX_PIXELS, description="larger images fail as decompression_bomb")
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
    # 2: URLs that are not http(s) with a host are `bad_url`; images decoded by the one decoder, not cv2
    version = 2
    Config = DownloadConfig
    needs = ("meta",)
    adds = ("image", "width", "height")
    batch_size = 4096
    extra_fields = (ATTEMPTS,)

    def __init__(self, config, context):
        super().__init__(config, context)
        self._prior_attempts: dict[str, int] = {}  # set by resume(): attempts already made per row
        self._scratch: list[Path] = []  # img2dataset scratch dirs used since the last commit

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
                elif why := malformed(url):  # not an http(s) URL with a host: nothing to ask the network
                    verdicts[i] = (STATUS_FAILED, "bad_url", f"{why}: {url[:200]}")
                elif why := self.guard.refuse(url):  # cheap first check; the egress proxy checks every hop
                    verdicts[i] = (STATUS_FAILED, "blocked_address", why)  # never requested
                else:
                    wanted[sid] = url
            results, attempts = self._fetch_guarded(wanted) if wanted else ({}, {})
        images, widths, heights = [], [], []
        image_col, w_col, h_col = (batch.column(c).to_pylist() for c in ("image", "width", "height"))
        stored = self._decode_fetched(results)
        for i, sid in enumerate(ids):
            if sid in wanted:
                res = results.get(sid)
                verdicts[i] = self._verdict(res, attempts[sid])
                if verdicts[i][0] == STATUS_KEPT:
                    try:  # img2dataset fetched the bytes; the one decoder decodes (stages/download_resize.py)
                        data, w_col[i], h_col[i], notes = stored[sid]()
                    except ImageRejected as err:  # permanent: the bytes are what the server serves
                        verdicts[i] = (STATUS_FAILED, err.reason, f"{wanted[sid][:200]}: {err}")
                    except (OSError, ValueError) as err:  # decoded, but could not be re-encoded
                        verdicts[i] = (STATUS_FAILED, "encode_failed", f"{wanted[sid][:200]}: {type(err).__name__}: {err}"[:500])
                    else:
                        image_col[i] = {"bytes": data, "path": f"{sid}.{self.config.encode_format}"}
                        if notes:
                            metas[i] = json.dumps({**json.loads(metas[i]), "image_decode": notes}, ensure_ascii=False)
            images.append(image_col[i]), widths.append(w_col[i]), heights.append(h_col[i])
        out = with_verdicts(batch, verdicts)
        out = out.set_column(out.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string()))
        for name, values, typ in (("image", images, IMAGE_TYPE), ("width", widths, pa.int32()), ("height", heights, pa.int32())):
            out = out.set_column(out.schema.get_field_index(name), name, pa.array(values, typ))
        out = conform(out)
        tried = pa.array([attempts.get(sid) for sid in ids], ATTEMPTS.type)
        if ATTEMPTS.name in out.column_names:
            return out.set_column(out.schema.get_field_index(ATTEMPTS.name), ATTEMPTS, tried)
        return out.append_column(ATTEMPTS, tried)

    def _decode_fetched(self, results: dict[str, dict]) -> dict[str, Callable[[], tuple]]:
        """Decode and resize every fetched image on `processes_count` threads (PIL releases the GIL
        while it decodes, resizes and encodes), as img2dataset's worker processes did; each value
        returns the result or raises what `stored_image` raised."""
        fetched = {sid: res[self.config.encode_format] for sid, res in results.items() if res and res.get("status") == "success"}
        with ThreadPoolExecutor(max_workers=self.config.processes_count) as pool:
            futures = {sid: pool.submit(stored_image, data, self.config) for sid, data in fetched.items()}
        return {sid: fut.result for sid, fut in futures.items()}

    def _verdict(self, res: dict | None, attempt: int) -> tuple[str, str | None, str | None]:
        if res is None:  # its img2dataset shard never finished (a worker died): try again on resume
            status, message = "failed_to_download", "img2dataset wrote no row for this sample"
        elif res["status"] == "success":
            return (STATUS_KEPT, None, None)
        else:
            status, message = res["status"], res["error_message"]
        if is_blocked(message):  # the egress proxy refused an address (first hop or a redirect)
            return (STATUS_FAILED, "blocked_address", message)
        if is_transient(status, message):
            return (STATUS_FAILED, TRANSIENT, f"{message} [attempt {attempt} of {self.config.max_attempts}]")
        return (STATUS_FAILED, REASONS.get(status, status), message)

    # -- resume: transient failures are not final (pipeline/runner.py _reopen) -------------------
    def _retryable(self, reason: str | None, detail: str | None, attempts: int | None) -> bool:
        if reason == TRANSIENT:
            transient = True
        elif reason in ("download_failed", "download_missing"):  # work files written before the split
            transient = is_transient("failed_to_download", detail)
        else:
            return False
        return transient and (attempts or 1) < self.config.max_attempts

    def reopen(self, output: Path) -> bool:
        names = pq.read_schema(output).names
        cols = [c for c in ("reason", "detail", ATTEMPTS.name) if c in names]
        failed = pq.read_table(output, columns=cols, filters=[("status", "=", STATUS_FAILED)]).to_pylist()
        return any(self._retryable(r["reason"], r["detail"], r.get(ATTEMPTS.name)) for r in failed)

    def resume(self, batch: pa.Table, previous: pa.Table) -> pa.Table:
        """Keep the previous verdict of every final row; download the retryable ones again."""
        previous = conform(previous)
        if ATTEMPTS.name not in previous.column_names:
            previous = previous.append_column(ATTEMPTS, pa.nulls(previous.num_rows, ATTEMPTS.type))
        before = {r["sample_id"]: r for r in previous.select(["sample_id", "reason", "detail", ATTEMPTS.name]).to_pylist()}
        ids = batch.column("sample_id").to_pylist()
        redo = [sid not in before or self._retryable(before[sid]["reason"], before[sid]["detail"], before[sid][ATTEMPTS.name]) for sid in ids]
        final = [sid for sid, again in zip(ids, redo) if not again]
        self._prior_attempts = {sid: before[sid][ATTEMPTS.name] or 1 for sid, again in zip(ids, redo) if again and sid in before}
        try:
            fresh = self.run(batch.filter(pa.array(redo)))
        finally:
            self._prior_attempts = {}
        kept_before = previous.filter(pc.is_in(previous.column("sample_id"), pa.array(final, pa.string())))
        merged = pa.concat_tables([kept_before, conform(fresh)], promote_options="permissive")
        return merged.take(pc.index_in(batch.column("sample_id"), merged.column("sample_id")))

    def committed(self) -> None:
        """img2dataset's scratch copy is redundant once the partition holding its images is committed."""
        for scratch in self._scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        self._scratch = []

    # -- img2dataset ---------------------------------------------------------------------------
    def _fetch_guarded(self, wanted: dict[str, str]) -> tuple[dict[str, dict], dict[str, int]]:
        """_fetch with every connection (each redirect included) made through the egress proxy."""
        with EgressProxy(self.guard, timeout=self.config.timeout) as proxy, proxy_environment(proxy):
            return self._fetch(wanted)

    def _fetch(self, wanted: dict[str, str]) -> tuple[dict[str, dict], dict[str, int]]:
        """img2dataset rows by sample_id, and the attempt number each row's result is from."""
        attempts = {sid: self._prior_attempts.get(sid, 0) + 1 for sid in wanted}
        results, reused = self._download(wanted, attempts)
        # Shards a crashed run finished are reused (no second download), but their transient
        # failures were that run's attempt: this run makes the next one now.
        again = {sid: wanted[sid] for sid in reused
                 if is_transient(results[sid]["status"], results[sid]["error_message"]) and attempts[sid] < self.config.max_attempts}
        if again:
            attempts.update({sid: attempts[sid] + 1 for sid in again})
            retried, _ = self._download(again, attempts)
            results = {sid: res for sid, res in results.items() if sid not in again} | retried
        return results, attempts

    def _download(self, wanted: dict[str, str], attempts: dict[str, int]) -> tuple[dict[str, dict], set[str]]:
        """Run img2dataset in a scratch dir named by (ids, attempt): a rerun reuses its finished shards.

        Returns the rows by sample_id and the ids whose shard was finished before this call.
        """
        key = "\n".join(f"{sid}:{attempts[sid]}" for sid in sorted(wanted))
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        scratch = Path(self.context.build_dir) / "work" / self.context.source / "scratch" / "download" / digest
        scratch.mkdir(parents=True, exist_ok=True)
        self._scratch.append(scratch)
        url_list = scratch / "urls.parquet"
        if not url_list.exists():  # same ids -> same list: shard numbering stays stable on resume
            tmp = url_list.with_suffix(".tmp")
            pq.write_table(pa.table({"url": list(wanted.values()), "sample_id": list(wanted)}), tmp)
            tmp.rename(url_list)
        out = scratch / "out"
        done_before = {int(p.name.split("_")[0]) for p in out.glob("*_stats.json")}
        cfg = self.config
        try:
            with _quiet():
                _run_img2dataset(url_list, out, cfg)
        except Exception as err:  # a crash of the downloader itself, not a bad URL: stop, don't isolate rows
            raise StageError(f"img2dataset failed in {scratch}: {err}") from err
        results, reused = {}, set()
        for shard, row in _read_shards(out, cfg.encode_format):
            results[row["sample_id"]] = row
            if shard in done_before:
                reused.add(row["sample_id"])
        return results, reused

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

    # retries and timeout come from the recipe; X-Robots-Tag opt-outs are honoured (img2dataset default).
    # It only fetches: its cv2 resizer ignores EXIF, fails 16-bit images and has no bomb limit, so the
    # stage decodes and resizes the bytes itself (stages/download_resize.py).
    download(
        disable_all_reencoding=True,
        url_list=str(url_list), input_format="parquet", url_col="url", save_additional_columns=["sample_id"],
        output_format="parquet", output_folder=str(output), incremental_mode="incremental",
        image_size=cfg.resolution, resize_mode=cfg.resize_mode, resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_format=cfg.encode_format, encode_quality=cfg.encode_quality, processes_count=cfg.processes_count,
        thread_count=cfg.thread_count, timeout=cfg.timeout, retries=cfg.retries,
        number_sample_per_shard=cfg.number_sample_per_shard, min_image_size=cfg.min_image_size,
        distributor="multiprocessing", extract_exif=False, enable_wandb=False,
    )


def _read_shards(folder: Path, encode_format: str) -> Iterator[tuple[int, dict]]:
    """(shard number, row) for every row img2dataset wrote."""
    cols = ["sample_id", "status", "error_message", "width", "height", encode_format]
    for shard in sorted(folder.glob("*.parquet")):
        for row in pq.read_table(shard, columns=cols).to_pylist():
            yield int(shard.stem), row


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
