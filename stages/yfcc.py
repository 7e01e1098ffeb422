"""YFCC100M metadata: stream the TSV (25- or 23-column, plain/.gz/.bz2) and compose captions."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Iterator, Literal
from urllib.parse import unquote_plus

import pyarrow as pa

from pipeline.schema import STATUS_FAILED, STATUS_FILTERED, STATUS_KEPT
from stages.base import FileSourceConfig, Source, Stage, StageConfig, register, resolve_paths, with_verdicts
from stages.yfcc_tsv import LAYOUTS, read_tsv


class YfccSourceConfig(FileSourceConfig):
    rows_per_table: int = 8192
    # understanding: a describe-the-image turn; generation: the caption is a text-to-image prompt
    task: Literal["understanding", "generation"] = "understanding"


@register
class YfccMetadata(Source):
    """One work row per TSV line; malformed lines are failed rows keyed by file and line."""

    name = "yfcc_metadata"
    version = 2  # 2: non-numeric photo ids are `bad_id`
    Config = YfccSourceConfig
    task = "understanding"

    def files(self) -> list[Path]:
        return resolve_paths(self.context.recipe_dir, self.config.paths)

    def read(self, path: Path) -> Iterator[pa.Table]:
        yield from read_tsv(path, self.context.source, self.config.task, self.config.rows_per_table)


_OK = (STATUS_KEPT, None, None)


# -- caption composition -------------------------------------------------------------------
_TAG = re.compile(r"<[^>]*>")
_WS = re.compile(r"\s+")
_URLISH = re.compile(r"https?://\S+|www\.\S+")
# IMG_1234, DSC01234, DSCN0042, P1010123, _MG_9999, GOPR0001, 20090704-123456, photo.jpg ...
_CAMERA = re.compile(
    r"^(?:img|dsc|dscn|dscf|dcp|pict?|p|cimg|imag|sam|gopr|mvi|_mg|_dsc|photo|image|scan|file)?"
    r"[\s_\-]*[\d_\-\s]{3,}(?:\.(?:jpe?g|png|tiff?|raw|nef|cr2|heic))?$|^[\w\-]+\.(?:jpe?g|png|tiff?|nef|cr2|heic)$",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W\d_]{2,}")
_ENGLISH_HINTS = frozenset(
    "the a an of and in on at to with for from by is are was were be been has have had this that these those "
    "my our your his her its their we you he she it they i me not no or but all any some so as if than then "
    "there here who what which when where how before after into out up down off just also very more most "
    "other only can will would could should near under over view day night old new little big house street "
    "park beach river lake city church photo picture".split()
)
_DESCRIBE = "<image_placeholder>\nDescribe this image."


class BadEncoding(ValueError):
    """A %-escape that does not decode as UTF-8 (YFCC is UTF-8; a Latin-1 `Caf%E9` is damaged text)."""


def clean_text(value: str | None) -> str:
    """URL-decoded, HTML-stripped, whitespace-collapsed text; raises BadEncoding for non-UTF-8 escapes."""
    if not value:
        return ""
    try:
        # `replace` would put U+FFFD in the caption; guessing Latin-1 could be wrong as often as right
        decoded = unquote_plus(value, errors="strict")
    except UnicodeDecodeError as err:
        raise BadEncoding(f"%-escapes are not UTF-8 ({err.reason}) in {value[:80]!r}") from None
    text = html.unescape(_TAG.sub(" ", decoded))
    return _WS.sub(" ", _URLISH.sub(" ", text)).strip()


def is_camera_default(title: str) -> bool:
    return bool(_CAMERA.match(title.strip()))


def looks_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) / len(letters) < 0.9:
        return False
    words = [w.lower() for w in _WORD.findall(text)]
    return len(words) < 4 or any(w in _ENGLISH_HINTS for w in words)


class YfccCaptionsConfig(StageConfig):
    use_title: bool = True
    use_description: bool = True
    use_tags: bool = False
    licenses: list[str] | None = None  # e.g. ["Attribution License"] keeps CC-BY only
    english_only: bool = False
    min_words: int = 2
    max_chars: int = 1000


@register
class YfccCaptions(Stage):
    """Filter videos, licences and language-free captions; compose the describe-the-image turn."""

    name = "yfcc_captions"
    version = 2  # 2: non-UTF-8 %-escapes are `bad_url_encoding`, not U+FFFD in the caption
    Config = YfccCaptionsConfig
    needs = ("meta",)
    adds = ("conversation", "prompt", "meta")
    batch_size = 4096

    def process(self, batch: pa.Table) -> pa.Table:
        verdicts, convs, metas, prompts = [], [], [], []
        columns = (batch.column(c).to_pylist() for c in ("status", "meta", "conversation", "task", "prompt"))
        for status, meta_s, conv, task, prompt in zip(*columns):
            if status != STATUS_KEPT:  # already rejected upstream: keep its verdict
                verdicts.append(None), convs.append(conv), metas.append(meta_s), prompts.append(prompt)
                continue
            meta = json.loads(meta_s)
            verdict, caption = self._caption(meta)
            verdicts.append(verdict)
            if caption:
                meta["caption"] = caption
                meta_s = json.dumps(meta, ensure_ascii=False)
                if task == "generation":
                    prompt = caption
                else:
                    conv = [{"role": "user", "content": _DESCRIBE}, {"role": "assistant", "content": caption}]
            convs.append(conv), metas.append(meta_s), prompts.append(prompt)
        old = list(zip(*(batch.column(c).to_pylist() for c in ("status", "reason", "detail"))))
        out = with_verdicts(batch, [v or o for v, o in zip(verdicts, old)])
        out = out.set_column(out.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string()))
        out = out.set_column(out.schema.get_field_index("prompt"), "prompt", pa.array(prompts, pa.string()))
        idx = out.schema.get_field_index("conversation")
        return out.set_column(idx, "conversation", pa.array(convs, out.schema.field("conversation").type))

    def _caption(self, meta: dict) -> tuple[tuple, str | None]:
        cfg = self.config
        if meta.get("marker", "0").strip() == "1":
            return (STATUS_FILTERED, "video", None), None
        license_name = unquote_plus(meta.get("license", ""))
        if cfg.licenses is not None and license_name not in cfg.licenses:
            return (STATUS_FILTERED, "license", license_name or "no licence"), None
        field = "title"
        try:
            title = clean_text(meta.get("title")) if cfg.use_title else ""
            if title and is_camera_default(title):
                title = ""
            field = "description"
            desc = clean_text(meta.get("description")) if cfg.use_description else ""
            parts = [title] if title else []
            if desc and desc.lower() != title.lower():
                parts.append(desc)
            field = "tags"
            if cfg.use_tags and meta.get("tags"):
                tags = [clean_text(t) for t in meta["tags"].split(",")]
                if tags := [t for t in tags if t]:
                    parts.append("Tags: " + ", ".join(tags))
        except BadEncoding as err:
            return (STATUS_FAILED, "bad_url_encoding", f"{meta.get('line', '')} {field}: {err}".strip()), None
        caption = ". ".join(p.rstrip(". ") for p in parts).strip()
        if not caption:
            had_markup = bool(meta.get("description")) and cfg.use_description
            return (STATUS_FILTERED, "all_markup" if had_markup else "no_caption", None), None
        if len(_WORD.findall(caption)) < cfg.min_words:
            return (STATUS_FILTERED, "no_language", caption[:200]), None
        if cfg.english_only and not looks_english(caption):
            return (STATUS_FILTERED, "not_english", caption[:200]), None
        if len(caption) > cfg.max_chars:
            caption = caption[: cfg.max_chars].rsplit(" ", 1)[0]
        return _OK, caption


def format_line(fields: dict[str, str], columns: int = 25) -> str:
    """A TSV line in either layout from named fields (URL-encode text first): for fixtures and benchmarks."""
    parts = [""] * columns
    for name, i in LAYOUTS[columns].items():
        parts[i] = str(fields.get(name, ""))
    if columns == 25:
        parts[0] = str(fields.get("line", ""))
    return "\t".join(parts) + "\n"
