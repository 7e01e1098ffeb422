"""The recipe hash covers input contents (cached by size and mtime) and each stage's code version."""

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.input_hashes import CACHE_ENV, content_hashes
from pipeline.recipe import load_recipe
from stages.prompt_clean import CleanPrompts

PROMPTS = Path(__file__).resolve().parents[2] / "recipes" / "data" / "tiny" / "midjourney_prompts.jsonl"
RECIPE = """
name: fp
sources:
  mj_prompts:
    kind: midjourney_prompts
    paths: [tiny/midjourney_prompts.jsonl]
    steps: [{stage: clean_prompts}]
mix:
  global_batch: 8
  stages:
    stage1: {ratio: {generation: 1}, sources: {mj_prompts: 1}, batches: 1}
"""


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache" / "hashes.json"))
    (tmp_path / "tiny").mkdir()
    shutil.copy(PROMPTS, tmp_path / "tiny")
    (tmp_path / "fp.yaml").write_text(RECIPE)
    return tmp_path / "fp.yaml"


def same_size_edit(path: Path) -> None:
    data = path.read_bytes()
    i = data.index(b"red")
    path.write_bytes(data[:i] + b"tan" + data[i + 3:])


def test_a_same_size_edit_changes_the_hash(recipe):
    before = load_recipe(recipe).hash
    assert load_recipe(recipe).hash == before  # deterministic
    data = recipe.parent / "tiny" / "midjourney_prompts.jsonl"
    size = data.stat().st_size
    same_size_edit(data)
    assert data.stat().st_size == size
    assert load_recipe(recipe).hash != before


def test_a_stage_version_bump_changes_the_hash(recipe, monkeypatch):
    before = load_recipe(recipe).hash
    monkeypatch.setattr(CleanPrompts, "version", CleanPrompts.version + 1)
    assert load_recipe(recipe).hash != before


def test_content_hashes_are_cached_by_size_and_mtime(recipe, tmp_path):
    data = recipe.parent / "tiny" / "midjourney_prompts.jsonl"
    first = content_hashes([data])
    st = data.stat()
    cache = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert cache[str(data.resolve())] == [st.st_size, st.st_mtime_ns, first[0]]
    # Same size and mtime: the cached digest is used, the file is not read again (the documented limit).
    same_size_edit(data)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert content_hashes([data]) == first
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # any real write moves the mtime
    assert content_hashes([data]) != first


def test_a_directory_input_is_hashed_by_its_files(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "hashes.json"))
    folder = tmp_path / "cls"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(b"aaaa")
    (folder / "sub" / "b.png").write_bytes(b"bbbb")
    first = content_hashes([folder])
    (folder / "sub" / "b.png").write_bytes(b"bbbc")
    assert content_hashes([folder]) != first
    (folder / "sub" / "b.png").rename(folder / "sub" / "c.png")
    assert len({*first, *content_hashes([folder])}) == 2
