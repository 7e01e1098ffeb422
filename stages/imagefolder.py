"""Class-conditional images (stage I): an ImageFolder tree -> generation rows prompted by class name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from pipeline.schema import STATUS_FAILED
from stages.base import Source, SourceConfig, register, row_tables
from stages.image_checks import ImageRejected, decode

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jpe"}


class ImageFolderConfig(SourceConfig):
    root: str  # one sub-directory per class, relative to the recipe
    # optional class-id -> name map: ImageNet's LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca")
    # or a JSON object {"n01440764": "tench"}
    class_names: str | None = None
    first_name_only: bool = True  # "tench, Tinca tinca" -> "tench"
    prompt_template: str = "{name}"
    rows_per_table: int = Field(256, gt=0)

    @field_validator("root", "class_names")
    @classmethod
    def _exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = Path((info.context or {}).get("recipe_dir", "."))
        if value is not None and not (base / value).exists():
            raise ValueError(f"{base / value} does not exist")
        return value


def load_class_names(path: Path, first_only: bool) -> dict[str, str]:
    """A synset mapping file or JSON object -> {class dir name: human name}."""
    if path.suffix == ".json":
        names = json.loads(path.read_text())
    else:
        names = {}
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected '<class id> <name>', got {line!r}")
            names[parts[0]] = parts[1]
    return {k: (v.split(",")[0].strip() if first_only else v.strip()) for k, v in names.items()}


@register
class ImageFolder(Source):
    """Each class directory is one input; unreadable files and unnamed classes become failed rows."""

    name = "imagefolder"
    version = 2  # 2: decode() applies EXIF, scales 16-bit, composites alpha on white
    Config = ImageFolderConfig
    task = "generation"

    def _root(self) -> Path:
        return self.context.recipe_dir / self.config.root

    def files(self) -> list[Path]:
        return sorted(p for p in self._root().iterdir() if p.is_dir())

    def preflight(self) -> None:
        if not self.files():
            raise ValueError(f"{self._root()}: no class directories")
        if self.config.class_names:
            self._names()  # a malformed map fails here, naming the line

    def _names(self) -> dict[str, str] | None:
        if not self.config.class_names:
            return None
        return load_class_names(self.context.recipe_dir / self.config.class_names, self.config.first_name_only)

    def read(self, path: Path) -> Iterator[pa.Table]:
        names = self._names()
        class_id = path.name
        name = names.get(class_id) if names is not None else class_id.replace("_", " ")
        files = sorted(p for p in path.rglob("*") if p.is_file())
        yield from row_tables((self._row(class_id, name, path, file) for file in files), self.config.rows_per_table)

    def _row(self, class_id: str, name: str | None, class_dir: Path, file: Path) -> dict:
        key = f"{class_id}/{file.relative_to(class_dir).as_posix()}"
        row = {"source": self.context.source, "source_key": key, "task": self.task}
        error = None
        if name is None:
            error = ("unknown_class", f"{class_id} is not in {self.config.class_names}")
        elif file.suffix.lower() not in IMAGE_SUFFIXES:
            error = ("not_an_image", f"{key}: suffix {file.suffix or 'none'!r}")
        else:
            try:
                width, height = decode(file.read_bytes()).size  # full decode: truncated files and bombs fail here
            except ImageRejected as err:
                error = (err.reason if err.reason == "decompression_bomb" else "corrupt_image", f"{key}: {err.reason}: {err}"[:500])
        if error:
            row.update(status=STATUS_FAILED, reason=error[0], detail=error[1])
        else:
            row.update(prompt=self.config.prompt_template.format(name=name), width=width, height=height,
                       image={"bytes": file.read_bytes(), "path": key},
                       meta={"class_id": class_id, "class_name": name})
        return row
