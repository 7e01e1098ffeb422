"""Every kind in the bad-input corpus (make_corpus.py) through the stage that owns it.

Each kind gets the verdict in EXPECTED (status, reason, a piece of the detail): nothing raises,
every input row comes out kept or rejected with its reason (rows in == rows out), and where the
input is valid the conversion is faithful (16-bit scaled, CMYK close to its RGB reference,
transparency on white, first frame of an animation, EXIF rotation applied, entities decoded).
"""

from __future__ import annotations

import http.server
import io
import json
import time
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from pipeline.recipe import RecipeError, load_recipe
from pipeline.schema import STATUS_FAILED, STATUS_FILTERED, STATUS_KEPT, make_rows
from stages.base import StageContext
from stages.chart_data import ChartTables
from stages.download import DownloadImages
from stages.image_checks import ALPHA_BACKGROUND, ImageLimits, ImageRejected, check, decode, decode_notes
from stages.preprocess import PreprocessImages
from stages.prompt_clean import CleanPrompts
from stages.prompt_source import MidjourneyPrompts
from stages.yfcc import YfccCaptions, YfccMetadata
from tests.bad_inputs import make_corpus
from tests.stages.loopback import LoopbackServer, QuietHandler

KEPT, FILTERED, FAILED = STATUS_KEPT, STATUS_FILTERED, STATUS_FAILED

# kind -> (status, reason, a substring of the detail or None)
EXPECTED: dict[str, tuple[str, str | None, str | None]] = {
    # prompts: midjourney_prompts -> clean_prompts
    "prompt_ok": (KEPT, None, None),
    "prompt_html_entities": (KEPT, None, None),
    "prompt_double_escaped": (KEPT, None, None),
    "prompt_html_markup": (KEPT, None, None),
    "prompt_markup_only": (FILTERED, "empty", "nothing left"),
    "prompt_zero_width": (KEPT, None, None),
    "prompt_rtl_marks": (KEPT, None, None),
    "prompt_combining": (KEPT, None, None),
    "prompt_emoji": (KEPT, None, None),
    "prompt_nul": (KEPT, None, None),
    "prompt_lone_surrogate": (FAILED, "invalid_utf8", "surrogates not allowed"),
    "prompt_invalid_utf8": (FAILED, "invalid_utf8", "byte 0xe9"),
    "prompt_empty": (FILTERED, "empty", "nothing left"),
    "prompt_whitespace": (FILTERED, "empty", "nothing left"),
    "prompt_extremely_long": (FILTERED, "too_long", "> max_chars 1000"),
    "prompt_mj_params_only": (FILTERED, "empty", "nothing left"),
    "prompt_not_a_string": (FAILED, "not_a_string", "holds int"),
    "prompt_bad_json": (FAILED, "bad_json", "prompts.jsonl:18"),
    # YFCC rows: yfcc_metadata -> yfcc_captions -> download_images
    "yfcc_ok": (KEPT, None, None),
    "yfcc_too_few_columns": (FAILED, "bad_column_count", "20 columns, expected 25 or 23"),
    "yfcc_too_many_columns": (FAILED, "bad_column_count", "27 columns"),
    "yfcc_bad_url_encoding": (FAILED, "bad_url_encoding", "title: %-escapes are not UTF-8"),
    "yfcc_non_numeric_id": (FAILED, "bad_id", "'photo-5x' is not a number"),
    "yfcc_missing_id": (FAILED, "missing_id", "empty photo id"),
    "yfcc_missing_url": (FAILED, "no_url", "meta has no url"),
    "yfcc_html_description": (KEPT, None, None),
    "yfcc_video": (FILTERED, "video", None),
    "yfcc_23_columns": (KEPT, None, None),
    "yfcc_invalid_utf8": (FAILED, "bad_encoding", "invalid continuation byte"),
    # chart tables: chart_tables
    "table_ok": (KEPT, None, None),
    "table_non_numeric": (FAILED, "non_numeric", "table_non_numeric.csv:3 column 'Rainfall': 'lots'"),
    "table_non_finite": (FAILED, "non_finite", "table_non_finite.csv:3"),
    "table_empty": (FAILED, "empty_table", "0 rows"),
    "table_one_column": (FAILED, "empty_table", "1 columns"),
    "table_too_long": (FAILED, "table_too_long", "40 rows > max_rows 12"),
    "table_html_entities": (KEPT, None, None),
    # images: the decoder + the cheap checks score_images applies (min side 32)
    "image_ok": (KEPT, None, None),
    "image_gray16_noise": (KEPT, None, None),  # issue 11: was clipped white and rejected near_uniform
    "image_cmyk_jpeg": (KEPT, None, None),
    "image_palette_transparency": (KEPT, None, None),
    "image_la_mode": (KEPT, None, None),
    "image_animated_gif": (KEPT, None, None),
    "image_animated_webp": (KEPT, None, None),
    "image_exif_rotated": (KEPT, None, None),
    "image_truncated_jpeg": (FAILED, "truncated_image", "truncated"),
    "image_zero_byte": (FAILED, "empty_image", "zero-byte"),
    "image_html_as_image": (FAILED, "undecodable_image", "starts with b'<!DOCTYPE html>"),
    "image_decompression_bomb": (FAILED, "decompression_bomb", "900000000 pixels"),
    "image_tiny_1x1": (FILTERED, "too_small", "1x1, min side 32"),
    # URLs: download_images (img2dataset behind the egress proxy) against a loopback server
    "url_ok": (KEPT, None, None),
    "url_slow_server": (FAILED, "download_transient", "timed out"),
    "url_redirect_loop": (FAILED, "download_failed", "infinite loop"),
    "url_redirect_disallowed": (FAILED, "blocked_address", "non-public address 127.0.0.2"),
    "url_not_found": (FAILED, "download_failed", "404"),
    "url_html_as_image": (FAILED, "undecodable_image", "starts with b'<!DOCTYPE html>"),
    "url_truncated_jpeg": (FAILED, "truncated_image", "truncated"),
    "url_decompression_bomb": (FAILED, "decompression_bomb", "900000000 pixels"),
    "url_exif_rotated": (KEPT, None, None),
    "url_gray16_noise": (KEPT, None, None),
    "url_non_http_scheme": (FAILED, "bad_url", "scheme 'ftp' is not http(s)"),
    "url_no_host": (FAILED, "bad_url", "url has no host"),
    # recipes: load_recipe (and `janus-forge build`: exit 2, nothing written); reason = the field named
    "recipe_ok": (KEPT, None, None),
    "recipe_ratio_sum_3": (KEPT, None, None),  # shares are relative (Table 2 writes 1:0:3): normalised, not an error
    "recipe_unknown_field": (FAILED, "mix.shuffle_bufer", "Extra inputs are not permitted"),
    "recipe_unknown_step_field": (FAILED, "sources.p.steps[0].min_word", "Extra inputs are not permitted"),
    "recipe_wrong_type": (FAILED, "mix.global_batch", "valid integer"),
    "recipe_ratio_all_zero": (FAILED, "mix.stages.stage1.ratio", "at least one positive share"),
    "recipe_ratio_negative": (FAILED, "mix.stages.stage1.ratio", "must be >= 0"),
    "recipe_missing_input_file": (FAILED, "sources.p.paths", "no input file matches 'no_such_prompts.jsonl'"),
}

# what a kept prompt must read after cleaning
CLEAN_PROMPTS = {
    "prompt_ok": "a red cube on a wooden table",
    "prompt_html_entities": "salt & pepper shakers on a café table, 'vintage' \"photo\"",
    "prompt_double_escaped": "black & white photo of a lighthouse at dusk",
    "prompt_html_markup": "a bold red fox in the snow",
    "prompt_zero_width": "a green apple on snow",
    "prompt_rtl_marks": "a blue bird on a branch",
    "prompt_combining": unicodedata.normalize("NFC", "a café in the old town of São Paulo"),
    "prompt_emoji": "a happy dog 🐶 wearing a party hat 🎉 at the beach",
    "prompt_nul": "a yellow taxi in the rain",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> make_corpus.Corpus:
    return make_corpus.build(tmp_path_factory.mktemp("corpus"))


def ctx(corpus, source="s", task="understanding", build_dir=None) -> StageContext:
    return StageContext(build_id="b", seed=0, recipe_dir=corpus.root, source=source, task=task, build_dir=build_dir)


def assert_verdicts(got: dict[str, dict]) -> None:
    """got: kind -> output row; each must carry its EXPECTED status, reason and detail piece."""
    for kind, row in got.items():
        status, reason, detail = EXPECTED[kind]
        assert (row["status"], row["reason"]) == (status, reason), (kind, row.get("detail"))
        if detail is not None:
            assert detail in (row["detail"] or ""), (kind, row["detail"])


def test_corpus_is_deterministic_and_covers_every_kind(tmp_path, corpus):
    again = make_corpus.build(tmp_path / "again")
    files = sorted(p.relative_to(corpus.root) for p in corpus.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    for rel in files:
        assert (corpus.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel
    assert len(corpus.kinds()) >= 25 and len(set(corpus.kinds())) == len(corpus.kinds())
    assert sorted(corpus.kinds()) == sorted(EXPECTED)  # the table covers the corpus, nothing more


def test_prompts(corpus):
    context = ctx(corpus, "p", "generation")
    cfg = MidjourneyPrompts.Config.model_validate({"kind": "midjourney_prompts", "paths": ["prompts.jsonl"]}, context={"recipe_dir": corpus.root})
    source = MidjourneyPrompts(cfg, context)
    source.preflight()
    rows = pa.concat_tables(list(source.read(corpus.root / "prompts.jsonl")))
    clean = CleanPrompts(CleanPrompts.Config(stage="clean_prompts"), context)
    out = clean.run(rows)
    assert rows.num_rows == out.num_rows == len(corpus.prompts)  # every line in, every line out
    by_line = {int(r["source_key"].rsplit(":", 1)[1]): r for r in out.to_pylist()}
    got = {kind: by_line[line] for kind, line in corpus.prompts.items()}
    assert_verdicts(got)
    for kind, text in CLEAN_PROMPTS.items():
        assert got[kind]["prompt"] == text, kind
    assert json.loads(got["prompt_html_entities"]["meta"])["raw_prompt"].startswith("salt &amp; pepper")  # nothing lost
    assert json.loads(got["prompt_mj_params_only"]["meta"])["mj_params"] == {"ar": "16:9", "v": "5.2", "q": "2", "no": "text, watermark"}


def _yfcc_rows(corpus, name: str) -> dict[int, dict]:
    context = ctx(corpus, "yfcc")
    cfg = YfccMetadata.Config.model_validate({"kind": "yfcc_metadata", "paths": [name]}, context={"recipe_dir": corpus.root})
    source = YfccMetadata(cfg, context)
    read = pa.concat_tables(list(source.read(corpus.root / name)))
    out = YfccCaptions(YfccCaptions.Config(stage="yfcc_captions"), context).run(read)
    assert read.num_rows == out.num_rows == (corpus.root / name).read_bytes().count(b"\n")
    rows = {}
    for r in out.to_pylist():  # failed lines are keyed file:line, kept ones by photo id (meta.line holds file:line)
        where = r["source_key"] if ":" in r["source_key"] else json.loads(r["meta"])["line"]
        rows[int(where.rsplit(":", 1)[1])] = r
    return rows


def test_yfcc_rows_vectorised_and_per_line_paths_agree(corpus):
    plain = _yfcc_rows(corpus, "yfcc.tsv")  # all valid UTF-8: Arrow-vectorised parse
    per_line = _yfcc_rows(corpus, "yfcc_bad_bytes.tsv")  # one bad byte: the per-line fallback
    for kind, line in corpus.yfcc.items():
        a, b = plain[line], per_line[line]
        assert (a["status"], a["reason"], a["source_key"].replace("yfcc.tsv", "yfcc_bad_bytes.tsv")) == (b["status"], b["reason"], b["source_key"]), kind
    got = {kind: plain[line] for kind, line in corpus.yfcc.items() if kind != "yfcc_missing_url"}
    got["yfcc_invalid_utf8"] = per_line[corpus.yfcc_invalid_utf8_line]
    assert_verdicts(got)
    caption = lambda kind: got[kind]["conversation"][1]["content"]  # noqa: E731
    assert caption("yfcc_html_description") == "A harbour at dawn & boats"
    assert caption("yfcc_23_columns") == "A lighthouse on the rocks. The old lighthouse at sunset"


# 3 s, not 1: a loaded CI machine (2 cores, many workers) can take over 1 s for a good fetch
TIMEOUT_S, SLOW_S = 3, 5


class CorpusServer(LoopbackServer):
    """Serves the corpus images; /slow.jpg answers late, /loop redirects to itself, /to-other to 127.0.0.2."""

    def __init__(self, files: dict[str, bytes], other_base: str):
        class Handler(QuietHandler):
            def do_GET(self):
                if self.path == "/loop":
                    return self.redirect("/loop")
                if self.path == "/to-other":
                    return self.redirect(f"{other_base}/ok.jpg")
                if self.path == "/slow.jpg":
                    time.sleep(SLOW_S)  # past the stage timeout: the client has gone when it answers
                self.send_body(files.get("/ok.jpg" if self.path == "/slow.jpg" else self.path))

        super().__init__(Handler)


def test_urls_and_yfcc_rows_through_download(tmp_path, corpus):
    """One img2dataset run: every URL kind plus the YFCC rows the captions stage kept."""
    files = {f"/{p.name}": p.read_bytes() for p in corpus.images.values()}
    with LoopbackServer(http.server.BaseHTTPRequestHandler, host="127.0.0.2") as other, CorpusServer(files, other.base) as srv:
        url_rows = [{"source": "u", "source_key": kind, "task": "understanding",
                     "meta": {"url": url if "://" in url else srv.base + url}} for kind, url in corpus.urls.items()]
        yfcc = [r for line, r in _yfcc_rows(corpus, "yfcc.tsv").items()]
        for r in yfcc:
            r["meta"] = r["meta"] and r["meta"].replace(make_corpus.CORPUS_HOST, srv.base + "/")
        table = pa.concat_tables([make_rows(url_rows), pa.Table.from_pylist(yfcc, schema=make_rows(url_rows).schema)])
        stage = DownloadImages(DownloadImages.Config(stage="download_images", resolution=32, timeout=TIMEOUT_S,
                                                     allow_networks=["127.0.0.1/32"]), ctx(corpus, build_dir=tmp_path / "build"))
        stage.preflight()
        out = stage.run(table)
    assert out.num_rows == table.num_rows
    rows = out.to_pylist()
    got = {r["source_key"]: r for r in rows[: len(url_rows)]}
    by_line = {int(json.loads(r["meta"])["line"].rsplit(":", 1)[1]): r for r in rows[len(url_rows):] if r["meta"]}
    for kind in ("yfcc_ok", "yfcc_missing_url", "yfcc_html_description", "yfcc_23_columns"):
        got[kind] = by_line[corpus.yfcc[kind]]
    assert_verdicts(got)
    size = lambda kind: (got[kind]["width"], got[kind]["height"])  # noqa: E731
    assert size("url_ok") == (32, 24) and size("url_exif_rotated") == (16, 32) and size("url_gray16_noise") == (32, 32)
    upright = np.asarray(Image.open(io.BytesIO(got["url_exif_rotated"]["image"]["bytes"])), dtype=np.int32)
    assert upright[:12, :, 0].mean() > 200 > upright[:12, :, 2].mean()  # red on top: EXIF applied
    grey = np.asarray(Image.open(io.BytesIO(got["url_gray16_noise"]["image"]["bytes"])), dtype=np.float64)
    assert abs(grey.mean() - (make_corpus.gray16_noise() >> 8).mean()) < 3  # scaled, not clipped white
    assert json.loads(got["url_exif_rotated"]["meta"])["image_decode"] == {"exif_orientation": 6}


def _decode_verdict(data: bytes, limits: ImageLimits) -> tuple[dict, Image.Image | None]:
    """What score_images decides before CLIP: the decoder, then the cheap checks."""
    try:
        img = decode(data)
    except ImageRejected as err:
        return {"status": FAILED, "reason": err.reason, "detail": str(err)}, None
    bad = check(img, limits)
    return ({"status": FILTERED, "reason": bad[0], "detail": bad[1]} if bad else {"status": KEPT, "reason": None, "detail": None}), img


def test_images_get_their_reason_and_valid_ones_convert_faithfully(corpus):
    limits = ImageLimits(min_side=32, max_aspect_ratio=3.0, min_pixel_std=2.0)
    verdicts, images = {}, {}
    for kind, path in corpus.images.items():
        verdicts[kind], images[kind] = _decode_verdict(path.read_bytes(), limits)
    assert_verdicts(verdicts)
    px = {kind: np.asarray(img, dtype=np.int32) for kind, img in images.items() if img is not None}
    assert all(img.mode == "RGB" for img in images.values() if img is not None)

    # 16-bit greyscale: the high byte of every sample (v >> 8, i.e. v / 257 within one level)
    noise = make_corpus.gray16_noise()
    assert (px["image_gray16_noise"][..., 0] == noise >> 8).all() and (px["image_gray16_noise"].std(-1) == 0).all()
    assert decode_notes(images["image_gray16_noise"]) == {"mode": "I;16", "scaled": "16-bit >> 8"}
    # CMYK JPEG: back to the RGB it was made from (JPEG loss only)
    ref = np.asarray(make_corpus.cmyk_reference(), dtype=np.int32)
    assert np.abs(px["image_cmyk_jpeg"] - ref).mean() < 3.0
    # palette with a transparent index: transparent half on the documented white, opaque half red
    assert ALPHA_BACKGROUND == (255, 255, 255)
    assert (px["image_palette_transparency"][:, :32] == ALPHA_BACKGROUND).all()
    assert (px["image_palette_transparency"][:, 32:] == (255, 0, 0)).all()
    # LA: grey 100 over white by its alpha ramp 0, 4, 8, ... per column
    alpha = np.arange(0, 256, 4)
    want = np.rint(100 * alpha / 255 + 255 * (1 - alpha / 255))
    assert np.abs(px["image_la_mode"][0, :, 0] - want).max() <= 1
    # animations: the first frame, and the frame count recorded
    for kind in ("image_animated_gif", "image_animated_webp"):
        assert np.abs(px[kind][:, :32] - make_corpus.ANIMATED_FRAMES[0]).max() <= 2, kind
        assert decode_notes(images[kind])["frames"] == len(make_corpus.ANIMATED_FRAMES)
    # EXIF orientation 6: the stored 64x32 (red left, blue right) displays 32x64, red on top
    assert images["image_exif_rotated"].size == (32, 64)
    top, bottom = px["image_exif_rotated"][:28].mean((0, 1)), px["image_exif_rotated"][36:].mean((0, 1))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    assert decode_notes(images["image_exif_rotated"]) == {"exif_orientation": 6}


PREPROCESS_REASONS = {"decompression_bomb": "decompression_bomb", "empty_image": "no_image"}


def test_images_through_preprocess_images(corpus):
    """The stage that re-encodes images: every row accounted, decode failures named, notes kept in meta."""
    rows = [{"source": "img", "source_key": kind, "task": "understanding", "image": {"bytes": p.read_bytes(), "path": p.name}}
            for kind, p in corpus.images.items()]
    stage = PreprocessImages(PreprocessImages.Config(stage="preprocess_images", mode="understanding", resolution=32), ctx(corpus))
    out = stage.run(make_rows(rows))
    assert out.num_rows == len(rows)
    for r in out.to_pylist():
        status, reason, detail = EXPECTED[r["source_key"]]
        if status == FAILED:  # this stage names a bomb and a missing image, else `corrupt_image` + the decoder's reason
            assert (r["status"], r["reason"]) == (FAILED, PREPROCESS_REASONS.get(reason, "corrupt_image")), r
            assert r["reason"] == "no_image" or reason in r["detail"], r
        else:
            assert (r["status"], r["width"], r["height"]) == (KEPT, 32, 32), r
    meta = {r["source_key"]: json.loads(r["meta"] or "{}") for r in out.to_pylist()}
    assert meta["image_animated_gif"]["image_decode"]["frames"] == 3
    assert meta["image_exif_rotated"]["image_decode"] == {"exif_orientation": 6}
    assert meta["image_gray16_noise"]["image_decode"]["scaled"] == "16-bit >> 8"
    assert "image_decode" not in meta["image_ok"]


def test_tables(corpus):
    rows = {}
    for kind, path in corpus.tables.items():
        cfg = ChartTables.Config.model_validate({"kind": "chart_tables", "paths": [str(path)]}, context={"recipe_dir": corpus.root})
        out = pa.concat_tables(list(ChartTables(cfg, ctx(corpus, "t")).read(path)))
        assert out.num_rows == 1, kind
        rows[kind] = out.to_pylist()[0]
    assert_verdicts(rows)
    table = json.loads(rows["table_html_entities"]["meta"])
    assert [r[0] for r in table["rows"]] == ["AT&T", "Café"]


def test_recipes_stop_before_any_work_naming_the_field(corpus):
    # (`janus-forge build` turns a RecipeError into exit 2 with nothing written: tests/pipeline/test_recipe.py)
    recipes = corpus.recipes
    for kind, path in recipes.items():
        status, field, detail = EXPECTED[kind]
        if status == KEPT:
            assert load_recipe(path).sources["p"].steps[0].stage == "clean_prompts"
            continue
        with pytest.raises(RecipeError) as err:
            load_recipe(path)
        assert str(err.value).startswith(f"{path}: {field}: ") and detail in str(err.value), (kind, str(err.value))


BUILD_RECIPE = """
name: corpus-build
rows_per_partition: 64
sources:
  p: {kind: midjourney_prompts, paths: ["ROOT/prompts.jsonl"], steps: [{stage: clean_prompts}]}
  y: {kind: yfcc_metadata, paths: ["ROOT/yfcc_bad_bytes.tsv"], steps: [{stage: yfcc_captions}]}
  t: {kind: chart_tables, paths: ["ROOT/tables/*.csv"]}
mix:
  global_batch: 2
  rows_per_shard: 2
  stages:
    stage1: {ratio: {generation: 1, understanding: 1}, sources: {p: 1, y: 1}, batches: 2}
"""


def test_a_build_over_the_corpus_accounts_for_every_row_in_the_catalog(corpus, local_ray, tmp_path):
    """The real runner on Ray: every input row is in stage_runs, every rejection in `rejections` with its reason."""
    import duckdb

    from pipeline.runner import BuildOptions, run_build

    recipe_path = tmp_path / "build.yaml"  # beside the build, not in the corpus: the corpus stays as written
    recipe_path.write_text(BUILD_RECIPE.replace("ROOT", str(corpus.root)))
    out = tmp_path / "build"
    run_build(load_recipe(recipe_path), BuildOptions(out=out))
    con = duckdb.connect(str(out / "catalog.duckdb"), read_only=True)
    runs = con.execute("SELECT source, stage, rows_in, rows_kept, rows_filtered, rows_failed FROM stage_runs ORDER BY source, step").fetchall()
    first = {}
    for source, stage, rows_in, kept, filtered, failed in runs:
        assert rows_in == kept + filtered + failed, (source, stage)
        first.setdefault(source, rows_in)
    assert first == {"p": len(corpus.prompts), "y": len(corpus.yfcc) + 1, "t": len(corpus.tables)}
    rejected = con.execute("SELECT source, source_key, reason FROM rejections").fetchall()
    assert len(rejected) == sum(r[4] + r[5] for r in runs)
    kind_of = {("p", f"prompts.jsonl:{line}"): kind for kind, line in corpus.prompts.items()}
    kind_of |= {("t", f"{kind}.csv"): kind for kind in corpus.tables}
    kind_of |= {("y", f"yfcc_bad_bytes.tsv:{line}"): kind for kind, line in corpus.yfcc.items()}
    kind_of[("y", f"yfcc_bad_bytes.tsv:{corpus.yfcc_invalid_utf8_line}")] = "yfcc_invalid_utf8"
    kind_of |= {("y", str(100000 + line)): kind for kind, line in corpus.yfcc.items()}  # parsed rows: by photo id (make_corpus)
    for source, key, reason in rejected:
        assert reason == EXPECTED[kind_of[(source, key)]][1], (source, key, reason)
    # every kind these stages reject is there (a missing URL only fails at download_images, not run here)
    should = {kind for kind in kind_of.values() if EXPECTED[kind][0] != KEPT and kind != "yfcc_missing_url"}
    assert {kind_of[(source, key)] for source, key, _ in rejected} == should
    n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    assert n == 2 * 2 and con.execute("SELECT count(*) FROM samples s JOIN rejections r USING (sample_id)").fetchone()[0] == 0
    con.close()
