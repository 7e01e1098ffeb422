"""One image decoder for the project: a decompression bomb is `decompression_bomb` wherever it enters."""

import pyarrow as pa
import pytest

import model.data
import stages.imagefolder
import stages.preprocess
import stages.score
from model.data import decode_image
from model.shards import DataError
from pipeline.schema import make_rows
from stages.base import StageContext
from stages.image_checks import ImageRejected, decode
from stages.imagefolder import ImageFolder
from stages.preprocess import PreprocessImages
from tests.stages.tiny_clip import huge_png_header, image_bytes

BOMBS = {
    "far_over": huge_png_header(20000, 20000),  # PIL raises: > 2x its limit
    "just_over": huge_png_header(10000, 10000),  # PIL only warns between 1x and 2x: still a bomb here
}


def ctx(tmp_path, task="understanding"):
    return StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="s", task=task)


def test_every_decoding_module_uses_the_one_decoder():
    for module in (stages.score, stages.preprocess, stages.imagefolder, model.data):
        assert module.decode is decode, module.__name__


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_decoder_names_bombs_and_honours_the_limit(name):
    with pytest.raises(ImageRejected) as err:
        decode(BOMBS[name])
    assert err.value.reason == "decompression_bomb"
    assert decode(image_bytes(0, (64, 64)), max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(ImageRejected, match="exceeds limit|could be decompression bomb"):
        decode(image_bytes(0, (64, 64)), max_pixels=64 * 63 // 2)


@pytest.mark.parametrize("mode", ["understanding", "generation"])
def test_preprocess_rejects_bombs_by_name(tmp_path, mode):
    rows = [{"source": "s", "source_key": k, "task": "understanding", "image": {"bytes": b, "path": f"{k}.png"}} for k, b in BOMBS.items()]
    rows.append({"source": "s", "source_key": "ok", "task": "understanding", "image": {"bytes": image_bytes(1), "path": "ok.png"}})
    rows.append({"source": "s", "source_key": "junk", "task": "understanding", "image": {"bytes": b"junk", "path": "junk.png"}})
    stage = PreprocessImages(PreprocessImages.Config(stage="preprocess_images", mode=mode, resolution=16), ctx(tmp_path))
    out = {r["source_key"]: r for r in stage.run(make_rows(rows)).to_pylist()}
    for key in BOMBS:
        assert (out[key]["status"], out[key]["reason"]) == ("failed", "decompression_bomb"), out[key]["detail"]
    assert (out["ok"]["status"], out["ok"]["width"]) == ("kept", 16)
    assert out["junk"]["reason"] == "corrupt_image" and "undecodable_image" in out["junk"]["detail"]


def test_imagefolder_rejects_a_bomb_file_by_name(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "bomb.png").write_bytes(BOMBS["far_over"])
    (tmp_path / "train" / "cat" / "ok.png").write_bytes(image_bytes(2))
    cfg = ImageFolder.Config.model_validate({"kind": "imagefolder", "root": "train"}, context={"recipe_dir": tmp_path})
    src = ImageFolder(cfg, ctx(tmp_path, "generation"))
    got = {r["source_key"]: r for r in pa.concat_tables([t for p in src.files() for t in src.read(p)]).to_pylist()}
    assert (got["cat/bomb.png"]["status"], got["cat/bomb.png"]["reason"]) == ("failed", "decompression_bomb")
    assert got["cat/ok.png"]["status"] == "kept" and (got["cat/ok.png"]["width"], got["cat/ok.png"]["height"]) == (64, 64)


def test_trainer_data_loader_stops_on_a_bomb_naming_it():
    row = {"shard": "shard-00000.parquet", "sample_id": "abc", "task": "understanding", "image": {"bytes": BOMBS["just_over"]}}
    with pytest.raises(DataError, match=r"shard-00000.parquet: row abc has a corrupt image: decompression_bomb") as err:
        decode_image(row)
    assert err.value.reason == "decompression_bomb"  # what vq_tokenize records as the row's reason
    assert decode_image({**row, "image": {"bytes": image_bytes(3)}}).mode == "RGB"
