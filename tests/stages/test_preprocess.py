"""Paper preprocessing: pad-to-square (grey 127) and short-side resize + centre crop."""

import io

import pytest
from PIL import Image

from pipeline.schema import make_rows
from stages.base import StageContext
from stages.preprocess import PreprocessImages, pad_to_square, resize_center_crop


def test_pad_to_square_grey_bars():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    out = pad_to_square(img, 64)
    assert out.size == (64, 64)
    assert out.getpixel((32, 2)) == (127, 127, 127) and out.getpixel((32, 61)) == (127, 127, 127)
    assert out.getpixel((32, 32)) == (255, 0, 0) and out.getpixel((0, 32)) == (255, 0, 0)


def test_center_crop_keeps_middle():
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((0, 255, 0), (100, 0, 200, 100))  # the middle third is green
    out = resize_center_crop(img, 32)
    assert out.size == (32, 32)
    assert out.getpixel((16, 16)) == (0, 255, 0) and out.getpixel((1, 16))[1] > 200


def png(w, h, mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["understanding", "generation"])
def test_stage_marks_corrupt_images(mode):
    rows = make_rows([
        {"source": "s", "source_key": "ok", "task": "understanding", "image": {"bytes": png(50, 20, "L"), "path": "ok.png"}},
        {"source": "s", "source_key": "bad", "task": "understanding", "image": {"bytes": b"not an image", "path": "bad.png"}},
        {"source": "s", "source_key": "trunc", "task": "understanding", "image": {"bytes": png(50, 50)[:60], "path": "t.png"}},
        {"source": "s", "source_key": "gone", "task": "understanding", "status": "failed", "reason": "x"},
    ])
    ctx = StageContext(build_id="b", seed=0, recipe_dir=".", source="s", task="understanding")
    out = PreprocessImages(PreprocessImages.Config(stage="preprocess_images", mode=mode, resolution=24), ctx).run(rows)
    assert out.column("status").to_pylist() == ["kept", "failed", "failed", "failed"]
    assert out.column("reason").to_pylist() == [None, "corrupt_image", "corrupt_image", "x"]
    first = out.to_pylist()[0]
    assert (first["width"], first["height"]) == (24, 24) and first["image"]["path"] == "ok.jpg"
    assert Image.open(io.BytesIO(first["image"]["bytes"])).mode == "RGB"
