"""Stage `clean_prompts`: strip Midjourney syntax from prompts, normalise them, filter bad ones."""

from __future__ import annotations

import html
import json
import re
import unicodedata
from dataclasses import dataclass, field

import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.schema import STATUS_FILTERED, STATUS_KEPT
from stages.base import Stage, StageConfig, register, with_verdicts

# Long and short spellings of the same parameter are recorded under one name.
ALIASES = {"aspect": "ar", "version": "v", "quality": "q", "stylize": "s", "chaos": "c", "repeat": "r", "weird": "w"}
# Switches that take no value: `--tile a cat` must keep "a cat".
SWITCHES = {"tile", "hd", "test", "testp", "upbeta", "uplight", "upanime", "video", "relax", "fast", "turbo", "draft", "creative", "remix"}
# These take a list (words or URLs) that runs to the next parameter or the end of the prompt.
RUN_TO_NEXT = {"no", "sref", "cref", "p", "profile"}
KNOWN = set(ALIASES) | set(ALIASES.values()) | SWITCHES | RUN_TO_NEXT | {
    "seed", "sameseed", "niji", "style", "iw", "stop", "cw", "sw", "sv", "exp", "video", "loop", "end", "raw",
}

# `--name` not glued to a word before it ("well--known" is prose). Phones autocorrect "--" to
# an em or en dash, so "—ar 16:9" counts too, but only for names Midjourney knows.
FLAG = re.compile(r"(?<![\w-])(--|[—–])([A-Za-z]+)")
VALUE = re.compile(r"\s*([^\s,]+)")
IMAGINE = re.compile(r"^\s*/imagine\b\s*(?:prompt\b\s*:?)?\s*", re.IGNORECASE)
LEADING_URL = re.compile(r"\s*<?(https?://[^\s<>]+)>?[\s,]*", re.IGNORECASE)
WEIGHT = re.compile(r"\s*::\s*(?:-?\d*\.?\d+)?\s*")  # "hot:: dog::2 cat::-0.5" multi-prompts
# controls, soft hyphen, zero-width characters, bidi marks, embeddings and isolates, BOM
INVISIBLE = re.compile("[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u00ad\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")
# Scraped prompts carry HTML: entities only with their `;` (html.unescape alone would turn
# "&notation" into "¬ation"), tags only when shaped like tags (<b>, </p>, <br/>, <a href=..>),
# so "a < b", "<3" and Midjourney's "<https://...>" image prompts are left alone.
ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;!?])")
REPEATED_COMMAS = re.compile(r",(?:\s*,)+")
# CJK scripts do not separate words with spaces: each character counts as one word.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


@dataclass
class Cleaned:
    text: str
    params: dict[str, str | bool] = field(default_factory=dict)
    image_urls: list[str] = field(default_factory=list)


def strip_parameters(text: str) -> tuple[str, dict[str, str | bool]]:
    """Remove `--flag value` parameters anywhere in the text; return the rest and the parameters."""
    flags = [m for m in FLAG.finditer(text) if m.group(1) == "--" or m.group(2).lower() in KNOWN]
    pieces, params, pos = [], {}, 0
    for i, m in enumerate(flags):
        if m.start() < pos:  # inside the value of the previous parameter
            continue
        pieces.append(text[pos:m.start()])
        name = m.group(2).lower()
        name = ALIASES.get(name, name)
        bound = next((f.start() for f in flags[i + 1:] if f.start() >= m.end()), len(text))
        if name in SWITCHES:
            value, pos = True, m.end()
        elif name in RUN_TO_NEXT:
            value, pos = text[m.end():bound].strip(" ,;") or True, bound
        else:
            v = VALUE.match(text, m.end(), bound)
            value, pos = (v.group(1), v.end()) if v else (True, m.end())
        params[name] = value
        pieces.append(" ")
    pieces.append(text[pos:])
    return "".join(pieces), params


def unescape_entities(text: str) -> str:
    """HTML entities with their `;` decoded, twice-escaped ones (`&amp;amp;`) too."""
    for _ in range(3):
        decoded = ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
        if decoded == text:
            break
        text = decoded
    return text


def strip_html(text: str) -> str:
    """Entities decoded, then tags replaced by a space."""
    return TAG.sub(" ", unescape_entities(text))


def clean_prompt(raw: str) -> Cleaned:
    """The prompt a text-to-image model should see: no HTML or Midjourney syntax, NFKC, single spaces."""
    text = INVISIBLE.sub("", unicodedata.normalize("NFKC", strip_html(raw)))
    text = IMAGINE.sub("", text, count=1)
    urls, pos = [], 0
    while m := LEADING_URL.match(text, pos):  # image prompts come first: "<url> <url> a cat"
        urls.append(m.group(1))
        pos = m.end()
    text, params = strip_parameters(text[pos:])
    text = WEIGHT.sub(", ", text)
    text = " ".join(text.split())
    text = REPEATED_COMMAS.sub(",", SPACE_BEFORE_PUNCT.sub(r"\1", text)).strip(" ,;:")
    return Cleaned(text=text, params=params, image_urls=urls)


def count_words(text: str) -> int:
    return len(WORD.findall(text))


class CleanPromptsConfig(StageConfig):
    min_words: int = Field(3, ge=1)
    max_chars: int = Field(1000, ge=1)
    blocklist: list[str] = Field(default_factory=list, description="words or phrases, case-insensitive, whole words")

    @field_validator("blocklist")
    @classmethod
    def _terms(cls, value: list[str]) -> list[str]:
        for i, term in enumerate(value):
            if not term.strip():
                raise ValueError(f"blocklist[{i}] is empty")
        return value


@register
class CleanPrompts(Stage):
    """Kept rows get the cleaned prompt; filtered rows keep the original and say why."""

    name = "clean_prompts"
    version = 2  # 2: HTML entities and tags removed, bidi isolates invisible
    Config = CleanPromptsConfig
    needs = ("prompt",)
    adds = ("prompt", "meta")
    batch_size = 1024

    def setup(self) -> None:
        terms = sorted({" ".join(t.split()) for t in self.config.blocklist}, key=len, reverse=True)
        self._terms = {t.casefold(): t for t in terms}
        alternatives = "|".join(r"\s+".join(map(re.escape, t.split())) for t in terms)
        self._blocked = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if terms else None

    def verdict(self, cleaned: Cleaned) -> tuple[str | None, str | None]:
        text, cfg = cleaned.text, self.config
        words = count_words(text)
        if not words:
            return "empty", "nothing left after removing HTML, invisible characters, Midjourney parameters, URLs and weights"
        if words < cfg.min_words:
            return "too_short", f"word count {words} < min_words {cfg.min_words}"
        if len(text) > cfg.max_chars:
            return "too_long", f"{len(text)} characters > max_chars {cfg.max_chars}"
        if self._blocked is not None and (m := self._blocked.search(text)):
            term = self._terms.get(" ".join(m.group(0).split()).casefold(), m.group(0))
            return "blocked", f"blocklisted term {term!r}"
        return None, None

    def process(self, batch: pa.Table) -> pa.Table:
        prompts = batch.column("prompt").to_pylist()
        metas = batch.column("meta").to_pylist()
        old = zip(batch.column("status").to_pylist(), batch.column("reason").to_pylist(), batch.column("detail").to_pylist())
        verdicts = []
        for i, previous in enumerate(old):
            if previous[0] != STATUS_KEPT:  # failed at the source: pass through untouched
                verdicts.append(previous)
                continue
            raw = prompts[i] or ""
            cleaned = clean_prompt(raw)
            reason, detail = self.verdict(cleaned)
            meta = json.loads(metas[i]) if metas[i] else {}
            if cleaned.params:
                meta["mj_params"] = cleaned.params
            if cleaned.image_urls:
                meta["image_urls"] = cleaned.image_urls
            if reason is None:
                if cleaned.text != raw:
                    meta["raw_prompt"] = raw  # nothing is lost: the shard keeps what was written
                prompts[i] = cleaned.text
            metas[i] = json.dumps(meta, sort_keys=True, ensure_ascii=False) if meta else metas[i]
            verdicts.append((STATUS_KEPT, None, None) if reason is None else (STATUS_FILTERED, reason, detail))
        batch = batch.set_column(batch.schema.get_field_index("prompt"), "prompt", pa.array(prompts, pa.string()))
        batch = batch.set_column(batch.schema.get_field_index("meta"), "meta", pa.array(metas, pa.string()))
        return with_verdicts(batch, verdicts)
