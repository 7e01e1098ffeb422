"""The bad-input corpus: every kind of malformed or unusual input the pipeline must survive.

    python tests/bad_inputs/make_corpus.py OUT_DIR      # writes the corpus, prints its kinds

Importable too: `build(out_dir)` writes the same files and returns a `Corpus` saying where each
kind lives. Deterministic: fixed seeds, no timestamps, so two builds are byte-identical.
The expected verdict of each kind is not here: it is the table in test_corpus.py.

Layout under OUT_DIR:
    prompts.jsonl            one line per prompt kind (raw bytes: invalid UTF-8 and lone surrogates included)
    yfcc.tsv                 one line per YFCC kind, all valid UTF-8 (the parser's vectorised path)
    yfcc_bad_bytes.tsv       the same lines plus one with invalid UTF-8 (the parser's per-line path)
    tables/<kind>.csv        chart_tables inputs
    images/<kind>.<ext>      image files (also served over HTTP from www/ by the download test)
    recipes/<kind>/recipe.yaml   recipes that must stop before any work, naming the field
URL kinds are paths on the test's loopback server (`URL_KINDS`); the server's behaviour per path
(slow, redirect loop, redirect to another address) is in test_corpus.py.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 20260511

# -- prompts -------------------------------------------------------------------------------
# kind -> the raw bytes of one JSONL line (without the newline)
def _prompt_line(text: str) -> bytes:
    return json.dumps({"prompt": text}, ensure_ascii=False).encode("utf-8")


PROMPTS: dict[str, bytes] = {
    "prompt_ok": _prompt_line("a red cube on a wooden table"),
    "prompt_html_entities": _prompt_line("salt &amp; pepper shakers on a caf&eacute; table, &#39;vintage&#39; &quot;photo&quot;"),
    "prompt_double_escaped": _prompt_line("black &amp;amp; white photo of a lighthouse at dusk"),
    "prompt_html_markup": _prompt_line("<p>a <b>bold</b> red fox<br/>in the <i>snow</i></p>"),
    "prompt_markup_only": _prompt_line("<div><br/></div>"),
    "prompt_zero_width": _prompt_line("a\u200b green\u200c apple\u2060 on\ufeff snow"),
    "prompt_rtl_marks": _prompt_line("\u202ba blue \u200fbird\u202c on a \u2067branch\u2069"),
    "prompt_combining": _prompt_line("a cafe\u0301 in the old town of Sa\u0303o Paulo"),
    "prompt_emoji": _prompt_line("a happy dog 🐶 wearing a party hat 🎉 at the beach"),
    "prompt_nul": _prompt_line("a yellow\u0000 taxi in the rain"),
    "prompt_lone_surrogate": b'{"prompt": "a broken \\ud800 character in a prompt"}',
    "prompt_invalid_utf8": b'{"prompt": "caf\xe9 au lait on a table"}',
    "prompt_empty": _prompt_line(""),
    "prompt_whitespace": _prompt_line(" \t\u3000\u00a0 \n "),
    "prompt_extremely_long": _prompt_line("a very detailed painting of " + "a castle and a dragon " * 5000),
    "prompt_mj_params_only": _prompt_line("--ar 16:9 --v 5.2 --q 2 --no text, watermark"),
    "prompt_not_a_string": b'{"prompt": 42}',
    "prompt_bad_json": b'{"prompt": "unterminated',
}

# -- YFCC100M metadata rows (25 columns, layout in ../../../shared/reference/data-sources.md) --
# The download URL uses CORPUS_HOST: the test points it at its loopback server.
CORPUS_HOST = "http://corpus.test/"


def _yfcc_fields(i: int, **over: str) -> list[str]:
    f = [""] * 25
    f[0], f[1], f[2], f[3], f[4] = str(i), str(100000 + i), f"{i:032x}", "12345678@N00", "someone"
    f[5], f[6], f[7] = "2010-07-04+12:00:00.0", "1278244800", "Canon+PowerShot+ELPH"
    f[8], f[9], f[10] = "A+lighthouse+on+the+rocks", "The+old+lighthouse+at+sunset", "lighthouse,sea"
    f[15], f[16] = f"http://www.flickr.com/photos/x/{100000 + i}/", f"{CORPUS_HOST}ok.jpg"
    f[17], f[18] = "Attribution+License", "http://creativecommons.org/licenses/by/2.0/"
    f[19], f[20], f[21], f[22], f[23], f[24] = "1", "1", "abc", "def", "jpg", "0"
    for name, value in over.items():
        f[int(name[1:])] = value
    return f


def _yfcc_rows() -> dict[str, bytes]:
    rows = {
        "yfcc_ok": _yfcc_fields(1),
        "yfcc_too_few_columns": _yfcc_fields(2)[:20],
        "yfcc_too_many_columns": _yfcc_fields(3) + ["extra", "fields"],
        "yfcc_bad_url_encoding": _yfcc_fields(4, c8="Caf%E9+de+la+Gare", c9=""),  # Latin-1 %-escape: not UTF-8
        "yfcc_non_numeric_id": _yfcc_fields(5, c1="photo-5x"),
        "yfcc_missing_id": _yfcc_fields(6, c1=""),
        "yfcc_missing_url": _yfcc_fields(7, c16=""),
        "yfcc_html_description": _yfcc_fields(8, c8="", c9="%3Cb%3EA+harbour%3C%2Fb%3E+at+dawn+%26amp%3B+boats%3Cbr%3E"),
        "yfcc_video": _yfcc_fields(9, c24="1"),
    }
    lines = {k: "\t".join(v).encode() for k, v in rows.items()}
    ok23 = _yfcc_fields(10)
    lines["yfcc_23_columns"] = "\t".join(ok23[1:2] + ok23[3:]).encode()  # the older split: no line number, no hash
    return lines


YFCC = _yfcc_rows()
YFCC_INVALID_UTF8 = "\t".join(_yfcc_fields(11, c8="Caf\udce9")).encode("utf-8", "surrogateescape")  # raw byte 0xE9

# -- chart tables ------------------------------------------------------------------------------
TABLES: dict[str, str] = {
    "table_ok": "City,Population\nLagos,15388\nLima,10719\nOslo,709\n",
    "table_non_numeric": "Month,Rainfall\nJan,12\nFeb,lots\nMar,30\n",
    "table_non_finite": "Month,Rainfall\nJan,12\nFeb,inf\nMar,30\n",
    "table_empty": "Month,Rainfall\n",
    "table_one_column": "Month\nJan\nFeb\n",
    "table_too_long": "Day,Visitors\n" + "".join(f"d{i},{i * 10}\n" for i in range(40)),
    "table_html_entities": "Brand,Share\nAT&amp;T,40\nCaf&eacute;,60\n",
}

# -- images --------------------------------------------------------------------------------------
# what the decoder composites transparent pixels onto (stages/image_checks.py ALPHA_BACKGROUND)
ANIMATED_FRAMES = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]  # left half of each frame; the right half is white


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gray16_noise() -> np.ndarray:
    """64x64 uint16 uniform noise over the full 16-bit range (the image issue 11 saw clipped)."""
    return np.random.default_rng(SEED).integers(0, 65536, size=(64, 64), dtype=np.uint16)


def cmyk_reference() -> Image.Image:
    """A smooth RGB picture whose CMYK JPEG must decode back close to it."""
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, 255 - (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def exif_reference() -> Image.Image:
    """64 wide x 32 high: left half red, right half blue (stored unrotated; EXIF says rotate)."""
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 32, 32))
    return img


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims width x height pixels (900 MP) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _images() -> dict[str, tuple[str, bytes]]:
    """kind -> (file name, bytes)."""
    rng = np.random.default_rng(SEED + 1)
    photo = Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8), "RGB")
    photo_jpeg = _save(photo, "JPEG", quality=90)

    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))  # index 0 black (transparent), 1 red
    palette.paste(1, (32, 0, 64, 64))
    la = Image.fromarray(np.stack([np.full((64, 64), 100, np.uint8), np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))], -1), "LA")

    frames = []
    for colour in ANIMATED_FRAMES:
        frame = Image.new("RGB", (64, 64), (255, 255, 255))
        frame.paste(colour, (0, 0, 32, 64))
        frames.append(frame)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display

    return {
        "image_ok": ("ok.jpg", photo_jpeg),
        "image_gray16_noise": ("gray16_noise.png", _save(Image.fromarray(gray16_noise()), "PNG")),
        "image_cmyk_jpeg": ("cmyk.jpg", _save(cmyk_reference().convert("CMYK"), "JPEG", quality=95)),
        "image_palette_transparency": ("palette_transparent.png", _save(palette, "PNG", transparency=0)),
        "image_la_mode": ("la.png", _save(la, "PNG")),
        "image_animated_gif": ("animated.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)),
        "image_animated_webp": ("animated.webp", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)),
        "image_exif_rotated": ("exif_rotated.jpg", _save(exif_reference(), "JPEG", quality=95, exif=exif)),
        "image_truncated_jpeg": ("truncated.jpg", photo_jpeg[: len(photo_jpeg) // 2]),
        "image_zero_byte": ("zero_byte.jpg", b""),
        "image_html_as_image": ("html_as_image.jpg", b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>\n"),
        "image_decompression_bomb": ("decompression_bomb.png", bomb_png()),
        "image_tiny_1x1": ("tiny_1x1.png", _save(Image.new("RGB", (1, 1), (10, 200, 10)), "PNG")),
    }


IMAGES = _images()

# -- URLs ------------------------------------------------------------------------------------------
# kind -> path on the test's loopback server, or a whole URL (the scheme cases)
URL_KINDS: dict[str, str] = {
    "url_ok": "/ok.jpg",
    "url_slow_server": "/slow.jpg",  # answers after the download timeout
    "url_redirect_loop": "/loop",  # 302 to itself, forever
    "url_redirect_disallowed": "/to-other",  # 302 to 127.0.0.2, which the recipe does not allow
    "url_not_found": "/missing.jpg",
    "url_html_as_image": "/html_as_image.jpg",
    "url_truncated_jpeg": "/truncated.jpg",
    "url_decompression_bomb": "/decompression_bomb.png",
    "url_exif_rotated": "/exif_rotated.jpg",  # stored 64x32, upright 32x64
    "url_gray16_noise": "/gray16_noise.png",
    "url_non_http_scheme": "ftp://127.0.0.1/ok.jpg",
    "url_no_host": "http:///ok.jpg",
}

# -- recipes -----------------------------------------------------------------------------------------
_RECIPE_OK = {
    "name": "corpus",
    "sources": {"p": {"kind": "midjourney_prompts", "paths": ["prompts.jsonl"], "steps": [{"stage": "clean_prompts"}]}},
    "mix": {"global_batch": 4, "stages": {"stage1": {"ratio": {"generation": 1}, "sources": {"p": 1}, "batches": 1}}},
}


def _recipe(**edits) -> dict:
    """A deep copy of the good recipe with `edits` applied at dotted paths (None deletes)."""
    recipe = json.loads(json.dumps(_RECIPE_OK))
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        node = recipe
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return recipe


RECIPES: dict[str, dict] = {
    "recipe_ok": _recipe(),
    "recipe_ratio_sum_3": _recipe(**{"mix.stages.stage1.ratio": {"generation": 3}}),  # shares are relative: valid
    "recipe_unknown_field": _recipe(**{"mix.shuffle_bufer": 100}),
    "recipe_unknown_step_field": _recipe(**{"sources.p.steps": [{"stage": "clean_prompts", "min_word": 3}]}),
    "recipe_wrong_type": _recipe(**{"mix.global_batch": "sixteen"}),
    "recipe_ratio_all_zero": _recipe(**{"mix.stages.stage1.ratio": {"generation": 0, "understanding": 0}}),
    "recipe_ratio_negative": _recipe(**{"mix.stages.stage1.ratio": {"generation": 1.5, "understanding": -0.5}}),
    "recipe_missing_input_file": _recipe(**{"sources.p.paths": ["no_such_prompts.jsonl"]}),
}


# -- the corpus ---------------------------------------------------------------------------------------
@dataclass
class Corpus:
    root: Path
    prompts: dict[str, int] = field(default_factory=dict)  # kind -> line in prompts.jsonl
    yfcc: dict[str, int] = field(default_factory=dict)  # kind -> line in yfcc.tsv (and yfcc_bad_bytes.tsv)
    yfcc_invalid_utf8_line: int = 0  # the extra line of yfcc_bad_bytes.tsv
    tables: dict[str, Path] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    recipes: dict[str, Path] = field(default_factory=dict)

    def kinds(self) -> list[str]:
        yfcc = [*self.yfcc, "yfcc_invalid_utf8"]
        return [*self.prompts, *yfcc, *self.tables, *self.images, *self.urls, *self.recipes]


def build(out_dir: str | Path) -> Corpus:
    """Write the corpus under `out_dir` (created) and say where each kind is."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root=root)

    (root / "prompts.jsonl").write_bytes(b"".join(line + b"\n" for line in PROMPTS.values()))
    corpus.prompts = {kind: i for i, kind in enumerate(PROMPTS, start=1)}

    body = b"".join(line + b"\n" for line in YFCC.values())
    (root / "yfcc.tsv").write_bytes(body)
    (root / "yfcc_bad_bytes.tsv").write_bytes(body + YFCC_INVALID_UTF8 + b"\n")
    corpus.yfcc = {kind: i for i, kind in enumerate(YFCC, start=1)}
    corpus.yfcc_invalid_utf8_line = len(YFCC) + 1

    (root / "tables").mkdir(exist_ok=True)
    for kind, text in TABLES.items():
        path = root / "tables" / f"{kind}.csv"
        path.write_text(text)
        corpus.tables[kind] = path

    (root / "images").mkdir(exist_ok=True)
    for kind, (name, data) in IMAGES.items():
        path = root / "images" / name
        path.write_bytes(data)
        corpus.images[kind] = path

    corpus.urls = dict(URL_KINDS)

    import yaml

    for kind, recipe in RECIPES.items():
        folder = root / "recipes" / kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prompts.jsonl").write_bytes(PROMPTS["prompt_ok"] + b"\n")
        path = folder / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        corpus.recipes[kind] = path
    return corpus


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_corpus.py OUT_DIR")
    built = build(sys.argv[1])
    print(f"{len(built.kinds())} kinds written to {built.root}:")
    for name in built.kinds():
        print(" ", name)
