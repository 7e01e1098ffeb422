"""The aesthetics report section over real score_images / dedup_images work files."""

import base64
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import duckdb
import pyarrow.parquet as pq

from pipeline.reports import aesthetics  # noqa: E402
from pipeline.schema import make_rows  # noqa: E402
from stages.base import StageContext  # noqa: E402
from stages.dedup_images import DedupImages, DedupImagesConfig  # noqa: E402
from stages.score import ScoreConfig, ScoreImages  # noqa: E402
from tests.stages.tiny_clip import image_bytes, make_tiny_clip  # noqa: E402


@dataclass
class Ctx:
    build_dir: Path
    con: object
    train_dir: Path | None = None

    def figure(self, fig):
        return "<img class='figure'>"

    def table(self, header, rows):
        return "<table>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"

    def image(self, data, caption):
        return f"<figure><img src='data:image/jpeg;base64,{base64.b64encode(data).decode()}'><figcaption>{caption}</figcaption></figure>"


def test_section_shows_thresholds_reasons_and_images(tmp_path):
    config_dir, weights = make_tiny_clip(tmp_path, "tiny-clip-768", 768)
    ctx = StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="mj", task="generation")
    score = ScoreImages(ScoreConfig(clip_model="tiny-clip-768", clip_weights="other", clip_pretrained=str(weights), clip_config_dir=str(config_dir),
                                    min_side=32, min_aesthetic=0.0, min_clip_similarity=-1.0), ctx)
    rows = lambda imgs: make_rows([{"task": "generation", "source": "mj", "source_key": f"k{i}", "prompt": "a fox",  # noqa: E731
                                     "image": {"bytes": b, "path": None}} for i, b in enumerate(imgs)])
    imgs = [image_bytes(i) for i in range(6)]
    first = [s["aesthetic"] for s in score.run(rows(imgs)).column("scores").to_pylist()]
    best = max(range(6), key=first.__getitem__)
    cut = round(sorted(first)[2], 4) + 1e-4  # the 3 lowest fail; the best one and its copy pass
    table = rows(imgs + [imgs[best], b"broken", image_bytes(9, flat=True)])
    scored = ScoreImages(score.config.model_copy(update={"min_aesthetic": cut}), ctx).run(table)
    # random-init towers map noise images close together: only the exact copy should go
    dedup = DedupImages(DedupImagesConfig(near_threshold=0.99999), ctx)
    dedup.plan(scored.filter(scored.column("status").to_numpy(zero_copy_only=False) == "kept").sort_by("sample_id"))
    deduped = dedup.run(scored)
    for stage, t in (("01-score_images", scored), ("02-dedup_images", deduped)):
        (tmp_path / "work" / "mj" / stage).mkdir(parents=True)
        pq.write_table(t, tmp_path / "work" / "mj" / stage / "part-00000.parquet")

    html = aesthetics.render(Ctx(tmp_path, duckdb.connect()))
    assert f"aesthetic ≥ {cut}" in html and "CLIP similarity ≥ -1.0" in html
    for reason in ("low_aesthetic", "undecodable_image", "near_uniform"):
        assert reason in html
    reasons = deduped.column("reason").to_pylist()
    assert "exact_duplicate" in reasons and "exact_duplicate" in html
    assert html.count("<figure>") >= 5 and "Kept (highest aesthetic)" in html


def test_section_skips_builds_without_scoring(tmp_path):
    assert aesthetics.render(Ctx(tmp_path, duckdb.connect())) is None
