"""YFCC metadata source and caption stage on generated TSVs in both layouts and compressions."""

import bz2
import gzip
import json
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from pipeline.schema import conform
from stages.base import StageContext
from stages.yfcc import YfccCaptions, YfccMetadata, clean_text, format_line, is_camera_default, looks_english


def ctx(tmp_path: Path) -> StageContext:
    return StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="yfcc", task="understanding", build_dir=tmp_path)


ROWS = [  # (id, title, description, tags, license, marker)
    ("1", "Sunset over the harbour", "Boats+<b>moored</b> at dusk", "sea,boat", "Attribution License", "0"),
    ("2", "IMG_1234", "", "", "Attribution License", "0"),  # camera default, nothing else
    ("3", "DSC01234", "A+dog+playing+in+the+park", "", "Attribution-NonCommercial License", "0"),
    ("4", "My holiday video", "the beach", "", "Attribution License", "1"),  # video
    ("5", "", quote_plus('<a href="http://x.com"><img src="y.jpg"></a>'), "", "Attribution License", "0"),  # all markup
    ("6", "Église de la ville", "très belle église à Paris", "", "Attribution License", "0"),
    ("7", "P1010123.JPG", "12345", "", "Attribution License", "0"),  # no language
]


def write_tsv(path: Path, columns: int, rows=ROWS, opener=open) -> None:
    with opener(path, "wt", encoding="utf-8") as fh:
        for n, (pid, title, desc, tags, lic, marker) in enumerate(rows):
            fields = {"line": n, "id": pid, "title": quote_plus(title) if "%" not in title else title,
                      "description": desc.replace(" ", "+") if "%" not in desc else desc, "tags": tags,
                      "url": f"http://example.com/{pid}.jpg", "license": quote_plus(lic), "marker": marker}
            fh.write(format_line(fields, columns))


@pytest.mark.parametrize("columns,suffix,opener", [(25, ".tsv", open), (23, ".bz2", bz2.open), (25, ".gz", gzip.open), (23, ".tsv", open)])
def test_source_reads_both_layouts_and_compressions(tmp_path, columns, suffix, opener):
    path = tmp_path / f"yfcc{suffix}"
    write_tsv(path, columns, opener=opener)
    src = YfccMetadata(YfccMetadata.Config(kind="yfcc_metadata", paths=[str(path)]), ctx(tmp_path))
    assert src.files() == [path]
    table = conform(__import__("pyarrow").concat_tables(list(src.read(path))))
    assert table.column("source_key").to_pylist() == [r[0] for r in ROWS]
    meta = json.loads(table.column("meta")[0].as_py())
    assert meta["url"] == "http://example.com/1.jpg" and meta["marker"] == "0" and meta["title"] == "Sunset+over+the+harbour"


def test_malformed_lines_become_failed_rows_naming_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    good = format_line({"id": "9", "title": "A+red+car", "url": "http://e.com/9.jpg", "marker": "0"})
    path.write_bytes(good.encode() + b"only\tthree\tcolumns\n" + good.replace("A+red", "A+r\xe9d").encode("latin-1") + b"\t" * 24 + b"\n")
    src = YfccMetadata(YfccMetadata.Config(kind="yfcc_metadata", paths=[str(path)], rows_per_table=2), ctx(tmp_path))
    tables = list(src.read(path))
    assert len(tables) == 2  # streamed in bounded tables
    table = __import__("pyarrow").concat_tables(tables)
    assert table.num_rows == 4  # every line accounted for
    assert table.column("status").to_pylist() == ["kept", "failed", "failed", "failed"]
    assert table.column("reason").to_pylist()[1:] == ["bad_column_count", "bad_encoding", "missing_id"]
    assert table.column("detail")[1].as_py().startswith("bad.tsv:2:")
    assert table.column("source_key")[2].as_py() == "bad.tsv:3"


def test_caption_stage_filters_and_composes(tmp_path):
    path = tmp_path / "y.tsv"
    write_tsv(path, 25)
    src = YfccMetadata(YfccMetadata.Config(kind="yfcc_metadata", paths=[str(path)]), ctx(tmp_path))
    table = next(src.read(path))
    stage = YfccCaptions(YfccCaptions.Config(stage="yfcc_captions"), ctx(tmp_path))
    out = stage.run(table)
    by_id = {r["source_key"]: r for r in out.to_pylist()}
    assert by_id["1"]["status"] == "kept"
    assert by_id["1"]["conversation"][1]["content"] == "Sunset over the harbour. Boats moored at dusk"
    assert by_id["1"]["conversation"][0]["content"].startswith("<image_placeholder>\n")
    assert json.loads(by_id["1"]["meta"])["caption"] == "Sunset over the harbour. Boats moored at dusk"
    assert (by_id["2"]["status"], by_id["2"]["reason"]) == ("filtered", "no_caption")
    assert by_id["3"]["conversation"][1]["content"] == "A dog playing in the park"  # camera title dropped
    assert by_id["4"]["reason"] == "video"
    assert by_id["5"]["reason"] == "all_markup"
    assert by_id["6"]["status"] == "kept"
    assert by_id["7"]["reason"] in ("no_caption", "no_language")

    strict = YfccCaptions(YfccCaptions.Config(stage="yfcc_captions", licenses=["Attribution License"], english_only=True, use_tags=True), ctx(tmp_path))
    out = {r["source_key"]: r for r in strict.run(table).to_pylist()}
    assert out["3"]["reason"] == "license"
    assert out["6"]["reason"] == "not_english"
    assert out["1"]["conversation"][1]["content"].endswith("Tags: sea, boat")


def test_upstream_failures_pass_through_unchanged(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("a\tb\n")
    src = YfccMetadata(YfccMetadata.Config(kind="yfcc_metadata", paths=[str(path)]), ctx(tmp_path))
    out = YfccCaptions(YfccCaptions.Config(stage="yfcc_captions"), ctx(tmp_path)).run(next(src.read(path)))
    assert out.column("reason").to_pylist() == ["bad_column_count"]


def test_text_helpers():
    assert clean_text("Caf%C3%A9+%3Cb%3Eau%3C%2Fb%3E+lait &amp; more") == "Café au lait & more"
    for title in ("IMG_1234", "DSC01234", "DSCN0042.JPG", "P1010123", "_MG_9999", "20090704-123456", "photo.jpg"):
        assert is_camera_default(title), title
    for title in ("Sunset at Big Sur", "Route 66", "IMG of my cat"):
        assert not is_camera_default(title), title
    assert looks_english("A dog in the park") and not looks_english("Ein Hund im Stadtpark läuft schnell")


def test_vectorised_path_chunk_boundaries_and_bad_rows(tmp_path, monkeypatch):
    import stages.yfcc_tsv as tsv

    monkeypatch.setattr(tsv, "CHUNK_BYTES", 64)  # many chunk boundaries, lines split across reads
    good = [format_line({"id": f"{i}", "title": f"Photo+{i}+of+the+s\u00e9a", "url": f"http://e.com/{i}.jpg", "marker": "0"}, 23) for i in range(5)]
    body = good[0] + "a\tb\n" + good[1] + format_line({"id": "", "title": "x"}, 23) + good[3] + good[4].rstrip("\n")  # no final newline
    path = tmp_path / "v.tsv"
    path.write_text(body)
    src = YfccMetadata(YfccMetadata.Config(kind="yfcc_metadata", paths=[str(path)]), ctx(tmp_path))
    table = __import__("pyarrow").concat_tables(list(src.read(path)))
    assert table.column("source_key").to_pylist() == ["0", "v.tsv:2", "1", "v.tsv:4", "3", "4"]
    assert table.column("reason").to_pylist() == [None, "bad_column_count", None, "missing_id", None, None]
    metas = [json.loads(m) for m in table.column("meta").to_pylist() if m]
    assert [m["line"] for m in metas] == ["v.tsv:1", "v.tsv:3", "v.tsv:5", "v.tsv:6"]
    assert metas[-1]["title"] == "Photo+4+of+the+s\u00e9a" and metas[-1]["marker"] == "0"
    from pipeline.schema import sample_id

    assert table.column("sample_id").to_pylist() == [sample_id("yfcc", k) for k in table.column("source_key").to_pylist()]


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "crlf.tsv"
    path.write_bytes(format_line({"id": "1", "title": "A+red+car", "marker": "0"}).replace("\n", "\r\n").encode())
    src = YfccMetadata(YfccMetadata.Config(kind="yfcc_metadata", paths=[str(path)]), ctx(tmp_path))
    assert json.loads(next(src.read(path)).column("meta")[0].as_py())["marker"] == "0"
