"""Text corpora with length filters and exact dedup; ImageFolder class-conditional rows."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.schema import sample_id
from stages.base import StageContext
from stages.imagefolder import ImageFolder
from stages.preprocess import PreprocessImages
from stages.text import TextCorpus, TextFilter


def ctx(tmp_path, task="text"):
    return StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="src", task=task, build_dir=tmp_path)


def text_source(tmp_path, **kw):
    cfg = TextCorpus.Config.model_validate({"kind": "text_corpus", **kw}, context={"recipe_dir": tmp_path})
    return TextCorpus(cfg, ctx(tmp_path))


def test_text_jsonl_and_parquet_every_record_accounted(tmp_path):
    lines = [json.dumps({"text": "The quick brown fox jumps over the lazy dog."}), "{not json", json.dumps({"body": "x"}),
             "", json.dumps({"text": "too short"}), json.dumps({"text": "The  quick brown fox jumps over the lazy dog. "})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"text": ["The quick brown fox jumps over the lazy dog.", None, "A different sentence with enough words."]}), tmp_path / "b.parquet")
    src = text_source(tmp_path, paths=["a.jsonl", "b.parquet"])
    src.preflight()
    table = pa.concat_tables([t for p in src.files() for t in src.read(p)])
    assert table.num_rows == 8  # 5 JSONL records (blank line is not one) + 3 parquet rows
    assert table.column("reason").to_pylist() == [None, "bad_json", "no_text", None, None, None, "no_text", None]
    assert table.column("detail")[1].as_py().startswith("a.jsonl:2:")

    stage = TextFilter(TextFilter.Config(stage="text_filter", min_chars=15), ctx(tmp_path))
    kept = table.filter(pa.compute.equal(table.column("status"), "kept"))
    stage.plan(kept.sort_by("sample_id").select(["sample_id", "text"]))
    out = stage.run(table)
    verdicts = dict(zip(out.column("source_key").to_pylist(), zip(out.column("status").to_pylist(), out.column("reason").to_pylist())))
    assert verdicts["a.jsonl:5"] == ("filtered", "too_short")
    dup_ids = sorted(sample_id("src", k) for k in ("a.jsonl:1", "a.jsonl:6", "b.parquet:row0"))
    winners = [k for k in ("a.jsonl:1", "a.jsonl:6", "b.parquet:row0") if verdicts[k][0] == "kept"]
    assert len(winners) == 1 and sample_id("src", winners[0]) == dup_ids[0]  # smallest id wins, whatever the order
    assert verdicts["b.parquet:row2"] == ("kept", None)
    assert out.filter(pa.compute.equal(out.column("reason"), "duplicate")).column("detail").to_pylist() == [dup_ids[0]] * 2


def test_text_parquet_missing_column_fails_preflight(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="no column 'text'"):
        text_source(tmp_path, paths=["c.parquet"]).preflight()


def save(path, size, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path, fmt)


def test_imagefolder_with_synset_map(tmp_path):
    root = tmp_path / "train"
    save(root / "n01440764" / "a.JPEG", (40, 20))
    save(root / "n01440764" / "b.png", (20, 20), "PNG")
    (root / "n01440764" / "notes.txt").write_text("hi")
    (root / "n01443537" / "broken.jpg").parent.mkdir(parents=True)
    (root / "n01443537" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    save(root / "n99999999" / "c.jpg", (8, 8))
    (tmp_path / "synsets.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    cfg = ImageFolder.Config.model_validate({"kind": "imagefolder", "root": "train", "class_names": "synsets.txt", "prompt_template": "a photo of a {name}"},
                                            context={"recipe_dir": tmp_path})
    src = ImageFolder(cfg, ctx(tmp_path, "generation"))
    src.preflight()
    table = pa.concat_tables([t for p in src.files() for t in src.read(p)])
    got = {r["source_key"]: r for r in table.to_pylist()}
    assert set(got) == {"n01440764/a.JPEG", "n01440764/b.png", "n01440764/notes.txt", "n01443537/broken.jpg", "n99999999/c.jpg"}
    assert got["n01440764/a.JPEG"]["prompt"] == "a photo of a tench" and got["n01440764/a.JPEG"]["task"] == "generation"
    assert got["n01440764/notes.txt"]["reason"] == "not_an_image"
    assert got["n01443537/broken.jpg"]["reason"] == "corrupt_image"
    assert got["n99999999/c.jpg"]["reason"] == "unknown_class"
    out = PreprocessImages(PreprocessImages.Config(stage="preprocess_images", mode="generation", resolution=16), ctx(tmp_path, "generation")).run(table)
    img = Image.open(io.BytesIO(out.to_pylist()[0]["image"]["bytes"]))
    assert img.size == (16, 16)


def test_imagefolder_bad_map_names_line(tmp_path):
    save(tmp_path / "r" / "cat" / "a.jpg", (8, 8))
    (tmp_path / "map.txt").write_text("cat kitty\nbroken-line-without-name\n")
    cfg = ImageFolder.Config.model_validate({"kind": "imagefolder", "root": "r", "class_names": "map.txt"}, context={"recipe_dir": tmp_path})
    with pytest.raises(ValueError, match="map.txt:2"):
        ImageFolder(cfg, ctx(tmp_path, "generation")).preflight()
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolder.Config.model_validate({"kind": "imagefolder", "root": "nope"}, context={"recipe_dir": tmp_path})
