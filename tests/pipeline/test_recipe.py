"""Recipes fail before any work, naming the file and the field."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "data" / "tiny.yaml"


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["sources"] = {"mj_prompts": raw["sources"]["mj_prompts"]}
    raw["sources"]["mj_prompts"]["steps"] = raw["sources"]["mj_prompts"]["steps"][:2]  # clean, dedup
    raw["sources"]["mj_prompts"]["paths"] = [str(TINY.parent / "tiny" / "midjourney_prompts.jsonl")]
    raw["mix"]["stages"] = {"stage1": {"ratio": {"generation": 1}, "sources": {"mj_prompts": 1}, "batches": 8}}
    mutate(raw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


CASES = {
    "unknown top-level key": (lambda r: r.update(sed=1), r"sed: Extra inputs are not permitted"),
    "unknown stage option": (lambda r: r["sources"]["mj_prompts"]["steps"][0].update(min_wrds=3),
                             r"sources\.mj_prompts\.steps\[0\]\.min_wrds: Extra inputs"),
    "wrong type": (lambda r: r["sources"]["mj_prompts"]["steps"][0].update(min_words="three"),
                   r"sources\.mj_prompts\.steps\[0\]\.min_words: Input should be a valid integer"),
    "negative ratio": (lambda r: r["mix"]["stages"]["stage1"]["ratio"].update(text=-1), r"mix\.stages\.stage1\.ratio: .*must be >= 0"),
    "zero weight": (lambda r: r["mix"]["stages"]["stage1"]["sources"].update(mj_prompts=0), r"weight of source 'mj_prompts' must be > 0"),
    "non-positive batches": (lambda r: r["mix"]["stages"]["stage1"].update(batches=0), r"mix\.stages\.stage1\.batches"),
    "missing input file": (lambda r: r["sources"]["mj_prompts"].update(paths=["nope.jsonl"]), r"sources\.mj_prompts\.paths: .*nope\.jsonl"),
    "unknown stage": (lambda r: r["sources"]["mj_prompts"]["steps"].append({"stage": "clean_promts"}), r"steps\[2\]\.stage: unknown stage 'clean_promts'"),
    "unknown source kind": (lambda r: r["sources"]["mj_prompts"].update(kind="mj"), r"sources\.mj_prompts\.kind: unknown source kind"),
    "ratio without a source": (lambda r: r["mix"]["stages"]["stage1"]["ratio"].update(text=1), r"ratio\.text: share 1.* none of its sources"),
    "mix names a missing source": (lambda r: r["mix"]["stages"]["stage1"]["sources"].update(laion=1), r"sources\.laion: no such source"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_recipe_names_file_and_field(tmp_path, name):
    mutate, pattern = CASES[name]
    path = _write(tmp_path, mutate)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert __import__("re").search(pattern, str(err.value)), str(err.value)


def test_tiny_recipe_is_valid_and_hash_is_stable():
    a, b = load_recipe(TINY), load_recipe(TINY)
    assert a.hash == b.hash and len(a.hash) == 64
    assert [s.stage for s in a.sources["mj_prompts"].steps][:2] == ["clean_prompts", "dedup_prompts"]
    assert set(a.mix.stages) == {"stage1", "stage2", "stage3"}
    ratios = {name: tuple(stage.ratio.get(t, 0) for t in ("understanding", "text", "generation")) for name, stage in a.mix.stages.items()}
    assert ratios == {"stage1": (1, 0, 3), "stage2": (2, 3, 5), "stage3": (5, 1, 4)}  # the paper's Table 2


def test_cli_bad_recipe_exits_2_and_writes_nothing(tmp_path):
    path = _write(tmp_path, lambda r: r["sources"]["mj_prompts"]["steps"][0].update(min_words="three"))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "pipeline", "build", str(path), "--out", str(out)], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 2
    assert "min_words" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
