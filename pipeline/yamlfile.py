"""Reading a YAML config file and naming the field in validation errors (data and train recipes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def where(loc: tuple) -> str:
    """('sources', 'mj', 'steps', 0, 'min_words') -> 'sources.mj.steps[0].min_words'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe(path: Path, error: ValidationError, prefix: tuple = ()) -> str:
    """One line per problem: `<file>: <field>: <message>`."""
    return "\n".join(f"{path}: {where(prefix + tuple(e['loc']))}: {e['msg']}" for e in error.errors())


def read_mapping(path: str | Path, error: type[Exception], what: str = "recipe") -> tuple[Path, dict[str, Any]]:
    """The resolved path and its top-level mapping; any problem raises `error` naming the file."""
    path = Path(path).resolve()
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return path, raw
