"""Regenerate recipes/data/tiny/: small seeded inputs for the tiny recipe (YFCC, text, ImageFolder, charts)."""

from __future__ import annotations

import io
import json
import random
import shutil
import sys
from pathlib import Path
from urllib.parse import quote_plus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from stages.chart_data import synthetic_table  # noqa: E402
from stages.charts import applicable, pick_style, render  # noqa: E402
from stages.yfcc import format_line  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "recipes" / "data" / "tiny"
SCENES = ["A red boat in the harbour", "Snow on the old church roof", "Children playing in the park",
          "Sunset over the river bridge", "Market stalls on a busy street", "A dog running on the beach",
          "Autumn trees along the lake", "Night lights of the city square", "A cat asleep on a window sill",
          "Fishing boats at dawn", "The lighthouse on the cliff", "Tulip fields in spring"]
# title, description, license, marker, file ("-" = not served)
EXTRA = [("IMG_4821", "", "Attribution License", "0", "img_x"),  # camera default: no caption
         ("Holiday clip", "our trip", "Attribution License", "1", "video"),  # video
         ("", quote_plus('<a href="http://www.flickr.com/"><img src="x.jpg"/></a>'), "Attribution License", "0", "markup"),
         ("A bridge that is gone", "404 on the server", "Attribution License", "0", "-"),
         ("Private network photo", "blocked before any request", "Attribution License", "0", "private")]


def scene(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A few coloured shapes: enough structure for JPEG, CLIP and VQ stages to chew on."""
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 5)):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        box = (x0, y0, x0 + rng.randint(8, size[0] // 2), y0 + rng.randint(8, size[1] // 2))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def yfcc(rng: random.Random) -> None:
    (OUT / "yfcc_images").mkdir(parents=True)
    lines = []
    for i, title in enumerate(SCENES):
        (OUT / "yfcc_images" / f"{i}.jpg").write_bytes(jpeg(scene(rng, (rng.randint(64, 96), rng.randint(48, 72)))))
        desc = quote_plus(f"<p>Taken on a walk, {rng.choice(['morning', 'evening', 'afternoon'])} light.</p>")
        lines.append({"id": 5000 + i, "title": quote_plus(title), "description": desc, "tags": "walk,photo",
                      "url": f"http://local.test/{i}.jpg", "license": quote_plus(rng.choice(["Attribution License", "Attribution-ShareAlike License"])), "marker": "0"})
    for j, (title, desc, lic, marker, name) in enumerate(EXTRA):
        url = "http://10.0.0.1/x.jpg" if name == "private" else f"http://local.test/{name}.jpg"
        if name not in ("-", "private"):
            (OUT / "yfcc_images" / f"{name}.jpg").write_bytes(jpeg(scene(rng, (48, 48))))
        lines.append({"id": 6000 + j, "title": quote_plus(title), "description": desc, "url": url, "license": quote_plus(lic), "marker": marker})
    text = "".join(format_line({**f, "line": n, "user": "1234@N00"}, 25) for n, f in enumerate(lines))
    text += "truncated\tline\twith\tfour\n"  # malformed: a recorded rejection
    (OUT / "yfcc100m_sample.tsv").write_text(text)


def text_corpus(rng: random.Random) -> None:
    sentences = [f"{s}. It was {w} and the air smelled of {x}." for s, w, x in
                 zip(SCENES, ["cold", "warm", "windy", "quiet"] * 3, ["salt", "pine", "rain", "bread"] * 3)]
    records = [{"text": s} for s in sentences] + [{"text": sentences[0]}, {"text": "too short"}, {"body": "no text field"}]
    rng.shuffle(records)
    (OUT / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def imagefolder(rng: random.Random) -> None:
    synsets = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus", "n01530575": "brambling, Fringilla montifringilla"}
    for cls in synsets:
        for k in range(4):
            path = OUT / "imagefolder" / cls / f"{cls}_{k}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg(scene(rng, (rng.randint(40, 72), rng.randint(40, 72)))))
    (OUT / "imagefolder" / "n01443537" / "README.txt").write_text("not an image: recorded as not_an_image\n")
    (OUT / "synsets.txt").write_text("".join(f"{k} {v}\n" for k, v in synsets.items()))


def tables_and_chartqa(rng: random.Random) -> None:
    (OUT / "tables").mkdir()
    (OUT / "tables" / "fruit_sales.csv").write_text("Fruit,2022,2023\nApple,120,135\nPear,80,72\nPlum,45,60\nCherry,30,41\n")
    (OUT / "tables" / "broken_readings.csv").write_text("Sensor,Reading\nA,1.5\nB,nan\n")  # rejected: non_finite
    split = OUT / "chartqa" / "train"
    (split / "png").mkdir(parents=True)
    (split / "tables").mkdir()
    questions = []
    for i in range(3):
        chart = ["bar", "line", "pie"][i]
        while not applicable(chart, t := synthetic_table(rng)):
            pass
        (split / "png" / f"{i}.png").write_bytes(render(t, chart, pick_style(rng), 40))
        (split / "tables" / f"{i}.csv").write_text("\n".join(",".join(map(str, [t["label"], *t["series"]] if r is None else r)) for r in [None, *t["rows"]]) + "\n")
        top = max(t["rows"], key=lambda r: r[1])
        questions.append({"imgname": f"{i}.png", "query": f"Which {t['label'].lower()} has the highest {t['series'][0]}?", "label": top[0]})
    questions.append({"imgname": "99.png", "query": "A question about a missing chart?", "label": "x"})
    (split / "train_human.json").write_text(json.dumps(questions, indent=1))
    img_t = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    txt_t = pa.list_(pa.struct([("user", pa.string()), ("assistant", pa.string()), ("source", pa.string())]))
    doc = jpeg(scene(rng, (60, 80)))
    pq.write_table(pa.table({
        "images": pa.array([[{"bytes": doc, "path": "doc0.jpg"}], []], img_t),
        "texts": pa.array([[{"user": "What colour is the largest shape?", "assistant": "It is hard to say.", "source": "tiny"},
                            {"user": "How many pages are shown?", "assistant": "One.", "source": "tiny"}],
                           [{"user": "q", "assistant": "a", "source": "tiny"}]], txt_t)}), OUT / "cauldron.parquet")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for step in (yfcc, text_corpus, imagefolder, tables_and_chartqa):
        step(random.Random(f"tiny:{step.__name__}"))
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
