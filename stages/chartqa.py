"""ChartQA's public layout (png/, tables/, {split}_human.json, {split}_augmented.json) -> QA rows."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator

from pipeline.schema import STATUS_FAILED, make_rows
from stages.base import Source, SourceConfig, register

PLACEHOLDER = "<image_placeholder>\n"


class ChartQAConfig(SourceConfig):
    root: str  # the directory holding train/ val/ test/
    splits: list[str] = ["train"]
    kinds: list[str] = ["human", "augmented"]
    max_turns: int = Field(8, gt=0, description="questions per conversation; more start a new row")

    @field_validator("root")
    @classmethod
    def _exists(cls, value: str, info: ValidationInfo) -> str:
        base = Path((info.context or {}).get("recipe_dir", "."))
        if not (base / value).is_dir():
            raise ValueError(f"{base / value} is not a directory")
        return value


@register
class ChartQA(Source):
    """One multi-turn row per chart image (per question file); questions on a missing PNG fail together."""

    name = "chartqa"
    Config = ChartQAConfig
    task = "understanding"

    def files(self) -> list[Path]:
        root = self.context.recipe_dir / self.config.root
        return [p for s in self.config.splits for k in self.config.kinds if (p := root / s / f"{s}_{k}.json").is_file()]

    def preflight(self) -> None:
        if not self.files():
            raise ValueError(f"{self.config.root}: no {{split}}_{{kind}}.json for splits {self.config.splits}, kinds {self.config.kinds}")

    def read(self, path: Path) -> Iterator[pa.Table]:
        src, split_dir = self.context.source, path.parent
        base = {"source": src, "task": self.task}
        try:
            entries = json.loads(path.read_text())
            if not isinstance(entries, list):
                raise ValueError("top level is not a list")
        except (ValueError, UnicodeDecodeError) as err:
            yield make_rows([{**base, "source_key": path.name, "status": STATUS_FAILED, "reason": "bad_json", "detail": f"{path}: {err}"}])
            return
        groups: dict[str, list[tuple[int, dict]]] = defaultdict(list)
        rows = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), (str, int, float)) for k in ("imgname", "query", "label")):
                rows.append({**base, "source_key": f"{path.name}#{i}", "status": STATUS_FAILED, "reason": "bad_entry",
                             "detail": f"{path.name} entry {i}: needs imgname, query, label"})
                continue
            groups[str(entry["imgname"])].append((i, entry))
        for imgname, items in sorted(groups.items()):
            png = split_dir / "png" / imgname
            for start in range(0, len(items), self.config.max_turns):
                chunk = items[start : start + self.config.max_turns]
                key = f"{path.stem}/{imgname}#{start // self.config.max_turns}"
                ids = [i for i, _ in chunk]
                if not png.is_file():
                    rows.append({**base, "source_key": key, "status": STATUS_FAILED, "reason": "missing_image",
                                 "detail": f"{path.name} entries {ids}: {png} not found"})
                    continue
                turns = []
                for _, e in chunk:
                    turns += [{"role": "user", "content": str(e["query"]).strip()}, {"role": "assistant", "content": str(e["label"]).strip()}]
                turns[0]["content"] = PLACEHOLDER + turns[0]["content"]
                table = split_dir / "tables" / (Path(imgname).stem + ".csv")
                rows.append({**base, "source_key": key, "image": {"bytes": png.read_bytes(), "path": f"png/{imgname}"}, "conversation": turns,
                             "meta": {"file": path.name, "entries": ids, "table": f"tables/{table.name}" if table.is_file() else None}})
            if len(rows) >= 512:
                yield make_rows(rows)
                rows = []
        if rows:
            yield make_rows(rows)
