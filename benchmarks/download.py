"""Our YFCC TSV -> captions -> img2dataset path against bare img2dataset on the same URLs from a local server."""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote_plus

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402

from stages.base import StageContext  # noqa: E402
from stages.download import DownloadImages, serve_directory  # noqa: E402
from stages.yfcc import YfccCaptions, YfccMetadata, format_line  # noqa: E402

SETTINGS = dict(resolution=128, processes_count=2, thread_count=32, timeout=10, number_sample_per_shard=500)


def make_images(root: Path, n: int) -> None:
    rng = random.Random(0)
    for i in range(n):
        img = Image.new("RGB", (rng.randint(200, 640), rng.randint(200, 480)), tuple(rng.randrange(256) for _ in range(3)))
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (10, 10, 120, 90))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        (root / f"{i}.jpg").write_bytes(buf.getvalue())


def bare(urls: list[str], work: Path) -> float:
    from img2dataset import download

    pq.write_table(pa.table({"url": urls}), work / "urls.parquet")
    t0 = time.perf_counter()
    download(url_list=str(work / "urls.parquet"), input_format="parquet", url_col="url", output_format="parquet",
             output_folder=str(work / "bare"), image_size=SETTINGS["resolution"], resize_mode="keep_ratio_largest",
             resize_only_if_bigger=True, processes_count=SETTINGS["processes_count"], thread_count=SETTINGS["thread_count"],
             timeout=SETTINGS["timeout"], number_sample_per_shard=SETTINGS["number_sample_per_shard"], distributor="multiprocessing",
             extract_exif=False, enable_wandb=False)
    seconds = time.perf_counter() - t0
    ok = sum(pq.read_table(p, columns=["status"]).column("status").to_pylist().count("success") for p in (work / "bare").glob("*.parquet"))
    return ok / seconds


def ours(urls: list[str], work: Path) -> float:
    """The whole YFCC path: TSV -> yfcc_metadata -> yfcc_captions -> download_images."""
    tsv = work / "yfcc.tsv"
    tsv.write_text("".join(format_line({"line": i, "id": i, "title": quote_plus(f"A photo of the harbour number {i}"), "url": u,
                                        "license": "Attribution+License", "marker": "0"}) for i, u in enumerate(urls)))
    ctx = StageContext(build_id="bench", seed=0, recipe_dir=work, source="yfcc", task="understanding", build_dir=work / "ours")
    source = YfccMetadata(YfccMetadata.Config(kind="yfcc_metadata", paths=[str(tsv)]), ctx)
    captions = YfccCaptions(YfccCaptions.Config(stage="yfcc_captions"), ctx)
    download = DownloadImages(DownloadImages.Config(stage="download_images", allow_networks=["127.0.0.1/32"], **SETTINGS), ctx)
    download.preflight()
    t0 = time.perf_counter()
    table = pa.concat_tables(list(source.read(tsv)))
    out = download.run(captions.run(table))
    seconds = time.perf_counter() - t0
    return out.column("status").to_pylist().count("kept") / seconds


SIDES = {"bare": bare, "ours": ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--small", action="store_true", help="300 images")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    n = 300 if args.small else args.images
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "www").mkdir()
        make_images(work / "www", n)
        with serve_directory(work / "www") as base:
            urls = [f"{base}{i}.jpg" for i in range(n)]
            runs = {"bare": [], "ours": []}
            # interleaved with alternating order and fresh output dirs, best of `reps` each: on a
            # shared machine neither side should get the quiet moment or the warm cache alone
            for rep in range(args.reps):
                order = ("bare", "ours") if rep % 2 == 0 else ("ours", "bare")
                for side in order:
                    runs[side].append(SIDES[side](urls, _fresh(work, f"{side}{rep}")))
    o, b = max(runs["ours"]), max(runs["bare"])
    print(f"{n} images from 127.0.0.1: ours {o:.1f} img/s, bare img2dataset {b:.1f} img/s, ratio {o / b:.3f} (runs {runs})")
    print(json.dumps({"benchmark": "download", "ours": round(o, 2), "baseline": round(b, 2), "unit": "images/s", "ratio": round(o / b, 4)}))


def _fresh(work: Path, name: str) -> Path:
    path = work / name
    path.mkdir()
    return path


if __name__ == "__main__":
    main()
