"""ChartQA-layout directories and the_cauldron Parquet become multi-turn understanding rows."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from stages.base import StageContext
from stages.cauldron import Cauldron
from stages.chartqa import ChartQA
from stages.preprocess import PreprocessImages


def ctx(tmp_path):
    return StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="s", task="understanding", build_dir=tmp_path)


def png(color=(0, 0, 255), size=(30, 20)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def read_all(src):
    return pa.concat_tables([t for p in src.files() for t in src.read(p)])


def test_chartqa_layout(tmp_path):
    split = tmp_path / "ChartQA" / "train"
    (split / "png").mkdir(parents=True)
    (split / "tables").mkdir()
    (split / "png" / "1.png").write_bytes(png())
    (split / "png" / "2.png").write_bytes(b"corrupt png")
    (split / "tables" / "1.csv").write_text("Year,Sales\n2020,3\n")
    human = [{"imgname": "1.png", "query": "What is the max?", "label": "3"}, {"imgname": "1.png", "query": "Which year?", "label": "2020"},
             {"imgname": "missing.png", "query": "q", "label": "a"}, {"imgname": "missing.png", "query": "q2", "label": "b"},
             {"imgname": "2.png", "query": "q", "label": "a"}, {"query": "no image name", "label": "x"}]
    (split / "train_human.json").write_text(json.dumps(human))
    (split / "train_augmented.json").write_text(json.dumps([{"imgname": "1.png", "query": "Sum?", "label": 3}]))
    cfg = ChartQA.Config.model_validate({"kind": "chartqa", "root": "ChartQA"}, context={"recipe_dir": tmp_path})
    src = ChartQA(cfg, ctx(tmp_path))
    src.preflight()
    table = read_all(src)
    got = {r["source_key"]: r for r in table.to_pylist()}
    assert set(got) == {"train_human/1.png#0", "train_human/missing.png#0", "train_human/2.png#0", "train_human.json#5", "train_augmented/1.png#0"}
    conv = got["train_human/1.png#0"]["conversation"]
    assert [t["content"] for t in conv] == ["<image_placeholder>\nWhat is the max?", "3", "Which year?", "2020"]
    assert json.loads(got["train_human/1.png#0"]["meta"])["table"] == "tables/1.csv"
    assert got["train_human/missing.png#0"]["reason"] == "missing_image" and "[2, 3]" in got["train_human/missing.png#0"]["detail"]
    assert got["train_human.json#5"]["reason"] == "bad_entry"
    # every question is accounted for: kept conversations + entries listed in failures
    answered = sum(len(r["conversation"]) // 2 for r in got.values() if r["status"] == "kept")
    assert answered + 2 + 1 == len(human) + 1  # kept turns + 2 on the missing PNG + 1 bad entry = all questions
    out = PreprocessImages(PreprocessImages.Config(stage="preprocess_images", mode="understanding", resolution=32), ctx(tmp_path)).run(table)
    assert {r["source_key"]: r["reason"] for r in out.to_pylist()}["train_human/2.png#0"] == "corrupt_image"


def test_chartqa_missing_root(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        ChartQA.Config.model_validate({"kind": "chartqa", "root": "nope"}, context={"recipe_dir": tmp_path})


def test_cauldron_parquet(tmp_path):
    img_t = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    txt_t = pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())]))
    images = [[{"bytes": png(), "path": None}], [], [{"bytes": png(), "path": "a"}, {"bytes": png(), "path": "b"}], [{"bytes": png(), "path": "p.png"}]]
    texts = [[{"user": "What is the title?", "assistant": "Annual report", "source": "docvqa"}, {"user": "Year?", "assistant": "2021", "source": "docvqa"}],
             [{"user": "q", "assistant": "a", "source": None}], [{"user": "q", "assistant": "a", "source": None}], [{"user": "", "assistant": "", "source": None}]]
    pq.write_table(pa.table({"images": pa.array(images, img_t), "texts": pa.array(texts, txt_t)}), tmp_path / "docmatix.parquet")
    cfg = Cauldron.Config.model_validate({"kind": "cauldron", "paths": ["*.parquet"], "rows_per_batch": 3}, context={"recipe_dir": tmp_path})
    src = Cauldron(cfg, ctx(tmp_path))
    src.preflight()
    table = read_all(src)
    assert table.column("source_key").to_pylist() == [f"docmatix.parquet:{i}" for i in range(4)]
    assert table.column("reason").to_pylist() == [None, "no_image", "multi_image", "no_turns"]
    conv = table.column("conversation")[0].as_py()
    assert [t["role"] for t in conv] == ["user", "assistant"] * 2 and conv[0]["content"].startswith("<image_placeholder>\nWhat is")
    assert json.loads(table.column("meta")[0].as_py())["sources"] == ["docvqa"]


def test_cauldron_wrong_columns(tmp_path):
    pq.write_table(pa.table({"image": [b"x"]}), tmp_path / "x.parquet")
    cfg = Cauldron.Config.model_validate({"kind": "cauldron", "paths": ["x.parquet"]}, context={"recipe_dir": tmp_path})
    with pytest.raises(ValueError, match="'images' and 'texts'"):
        Cauldron(cfg, ctx(tmp_path)).preflight()
