"""Repro training: tiny stage I -> II -> III, each from the previous checkpoint; the report section renders it."""

from __future__ import annotations

import base64
import importlib
import json
import sys
import types

import pytest

from model.repro import train_tiny_stages
from model.tiny import resolve_model_dir
from tests.model.conftest import sample_rows, write_shards

pytestmark = pytest.mark.slow

RATIOS = {"stage1": {"understanding": 1, "text": 0, "generation": 3},
          "stage2": {"understanding": 2, "text": 3, "generation": 5},
          "stage3": {"understanding": 5, "text": 1, "generation": 4}}


def test_tiny_stages_chain_and_losses_fall(tmp_path):
    build = tmp_path / "build"
    for stage, ratio in RATIOS.items():
        write_shards(build, stage, sample_rows(64, ratio, seed=int(stage[-1])), 8, ratio, rows_per_shard=32)
    runs = train_tiny_stages(build, tmp_path / "train")  # raises if a task's loss did not fall
    assert [r.name for r in runs] == ["stage1", "stage2", "stage3"]
    base = resolve_model_dir("tiny", build / "models")
    for run, init in zip(runs, [base, runs[0] / "final", runs[1] / "final"]):
        recipe = json.loads((run / "recipe.json").read_text())
        assert recipe["init"] == str(init if init == base else init.parent)
        assert (run / "final" / "model.safetensors").is_file() and (run / "loss.png").is_file()
        assert (run / "samples" / "grid.png").is_file()
    report = json.loads((tmp_path / "train" / "training.json").read_text())
    assert set(report["stage2"]["loss"]) == {"understanding", "text", "generation"}

    # the report section renders curves, the table and the grids (pipeline.report may not be on this branch)
    if "pipeline.report" not in sys.modules:
        try:
            importlib.import_module("pipeline.report")
        except ImportError:
            fake = types.ModuleType("pipeline.report")
            fake.section = lambda title, order=0: (lambda fn: fn)
            sys.modules["pipeline.report"] = fake
    from pipeline.reports import training

    ctx = types.SimpleNamespace(
        train_dir=tmp_path / "train",
        figure=lambda fig: f"<img src='data:image/png;base64,{base64.b64encode(b'x').decode()}'>",
        table=lambda header, rows: "<table>" + "".join(f"<tr><td>{'</td><td>'.join(map(str, r))}</td></tr>" for r in rows) + "</table>",
        image=lambda data, caption: f"<figure>{caption}</figure>",
    )
    html = training.render(ctx)
    assert "stage3: CFG samples" in html and html.count("<tr>") >= 8
    assert training.render(types.SimpleNamespace(train_dir=None)) is None
