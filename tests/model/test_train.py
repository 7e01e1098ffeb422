"""Trainer: stage freezing, exact resume after SIGKILL, losses fall, logs/samples, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from model.cli import main as cli_main
from model.config import load_train_recipe
from model.freeze import GROUPS
from model.shards import DataError
from model.tiny import ModelDirError
from model.train import Trainer, TrainingError
from tests.model.conftest import sample_rows, write_shards

ROOT = Path(__file__).resolve().parents[2]
FROZEN = {1: {"vision_model", "vqmodel", "language_model", "lm_head"}, 2: {"vision_model", "vqmodel"}, 3: {"vqmodel"}}


def recipe_file(tmp: Path, stage: int, **override) -> Path:
    raw = yaml.safe_load((ROOT / f"recipes/train/tiny/stage{stage}.yaml").read_text())
    raw["samples"] = {"prompts": [], "questions": 0}
    for key, value in override.items():
        node = raw
        *parents, leaf = key.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path = tmp / f"stage{stage}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def group_of(name: str) -> str:
    for group, prefix in (("vision_model", "model.vision_model."), ("aligner", "model.aligner."), ("vqmodel", "model.vqmodel."),
                          ("generation_embeddings", "model.generation_embeddings."), ("generation_aligner", "model.generation_aligner."),
                          ("generation_head", "model.generation_head."), ("language_model", "model.language_model."), ("lm_head", "lm_head.")):
        if name.startswith(prefix):
            return group
    raise AssertionError(name)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_freezing(stage, tmp_path, tiny_dir, tiny_build):
    # Table 2's freezing, as the real recipes carry it (the tiny stage I also trains its random LLM)
    paper = yaml.safe_load((ROOT / f"recipes/train/janus-pro-1b/stage{stage}.yaml").read_text())["trainable"]
    recipe = load_train_recipe(recipe_file(tmp_path, stage, schedule__steps=3, schedule__warmup_steps=0, trainable=paper),
                               data=tiny_build, init=tiny_dir)
    final = Trainer(recipe, tmp_path / "run").train()
    before, after = weights(tiny_dir), weights(final)
    assert before.keys() == after.keys()
    moved = {group_of(n) for n in before if not torch.equal(before[n], after[n])}
    for name in before:
        if group_of(name) in FROZEN[stage]:
            assert torch.equal(before[name], after[name]), f"frozen {name} changed in stage {stage}"
    # every trainable group moved (a tied lm_head is saved once, as embed_tokens)
    present = {group_of(n) for n in before}
    assert moved == present - FROZEN[stage]
    assert present >= set(GROUPS) - {"lm_head"}


def run_cli(recipe: Path, out: Path, data: Path, init: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "model.cli", "train", str(recipe), "--out", str(out), "--data", str(data), "--init", str(init), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def records(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "train.jsonl").read_text().splitlines()]


# Wall-clock fields; everything else in a step's record is a function of the data and the weights.
TIMING = {"time", "step_time", "data_wait", "tokens_per_s", "tflops", "mfu", "peak_mem_gib"}


def latest_step(run: Path) -> int | None:
    marker = run / "checkpoints" / "latest"
    text = marker.read_text().strip() if marker.is_file() else ""
    return int(text.removeprefix("step-")) if text else None


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tmp_path, tiny_dir, tiny_build):
    """SIGKILL a real `train` process after a checkpoint and a step past it, rerun with --resume:
    the per-step records (loss, grad norm, lr, data position) equal a clean run's bit for bit, each
    step is logged once (the resumed run drops the killed run's records past its checkpoint and
    rewrites them), and the final weights are identical."""
    recipe = recipe_file(tmp_path, 2, schedule__steps=10, checkpoint_every=3)
    full = run_cli(recipe, tmp_path / "full", tiny_build, tiny_dir)  # runs beside the killed one
    killed = run_cli(recipe, tmp_path / "killed", tiny_build, tiny_dir)
    run = tmp_path / "killed"
    deadline = time.time() + 200
    # Kill once a checkpoint exists and a later step has been logged: the records past the
    # checkpoint are then the ones a resume must replace. Looked at while stopped (SIGSTOP), so
    # no checkpoint can land between the look and the kill.
    while time.time() < deadline and killed.poll() is None:
        killed.send_signal(signal.SIGSTOP)
        ckpt = latest_step(run)
        if ckpt is not None and (run / "train.jsonl").read_text().count("\n") > ckpt:
            break
        killed.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    killed_at = time.time()
    ckpt, before = latest_step(run), records(run)
    assert ckpt is not None and ckpt < len(before) < 10, (ckpt, len(before))
    with (run / "train.jsonl").open("a") as f:  # and a record torn by the kill mid-write
        f.write('{"step": %d, "loss": {"te' % (len(before) + 1))
    resumed = run_cli(recipe, run, tiny_build, tiny_dir, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert full.wait(timeout=300) == 0, full.stderr.read()[-2000:]
    after, clean = records(run), records(tmp_path / "full")
    assert [r["step"] for r in after] == list(range(1, 11))  # none missing, none twice
    assert after[:ckpt] == before[:ckpt]  # the killed run's records up to its checkpoint are kept as written
    assert all(r["time"] > killed_at for r in after[ckpt:])  # the rest were rewritten by the resumed run
    for a, b in zip(after, clean):
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}, a["step"]
    a, b = weights(tmp_path / "full" / "final"), weights(run / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_losses_fall_and_logs(tmp_path, tiny_dir, tiny_build):
    recipe = load_train_recipe(recipe_file(tmp_path, 2, schedule__steps=20, samples={"prompts": ["a red square"], "questions": 2, "max_new_tokens": 4}),
                               data=tiny_build, init=tiny_dir)
    Trainer(recipe, tmp_path / "run").train()
    run = tmp_path / "run"
    records = [json.loads(l) for l in (run / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 21))
    for r in records:
        assert set(r["loss"]) <= {"understanding", "text", "generation"} and r["tokens_per_s"] > 0
        assert r["data_wait"] >= 0 and r["step_time"] > 0 and 0 <= r["ratio_drift"] < 1
    # stage II ratio 2:3:5 over batches of 8 rows cannot be exact: the drift is reported
    assert max(r["ratio_drift"] for r in records) > 0
    summary = json.loads((run / "summary.json").read_text())
    for task in ("understanding", "text", "generation"):
        assert summary["loss"][task]["last"] < summary["loss"][task]["first"], task
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "samples" / "grid.png").is_file()
    answers = json.loads((run / "samples" / "answers.json").read_text())
    assert len(answers) == 2 and all("answer" in a for a in answers)


def test_existing_run_is_not_overwritten(tmp_path, tiny_dir, tiny_build):
    recipe = load_train_recipe(recipe_file(tmp_path, 1, schedule__steps=2), data=tiny_build, init=tiny_dir)
    final = Trainer(recipe, tmp_path / "run").train()
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(TrainingError, match="already holds a run"):
        Trainer(recipe, tmp_path / "run")
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp


def test_bad_init(tmp_path, tiny_build, tiny_dir):
    path = recipe_file(tmp_path, 1)
    with pytest.raises(ModelDirError, match="does not exist"):
        Trainer(load_train_recipe(path, data=tiny_build, init=tmp_path / "nope"), tmp_path / "run")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelDirError, match="model_type='bert'"):
        Trainer(load_train_recipe(path, data=tiny_build, init=other), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # the CLI says it in one line and exits 2
    assert cli_main(["train", str(path), "--out", str(tmp_path / "run"), "--data", str(tiny_build), "--init", str(other)]) == 2


def test_missing_task_rows(tmp_path, tiny_dir):
    ratio = {"understanding": 1, "text": 0, "generation": 3}
    build = write_shards(tmp_path / "build", "stage2", sample_rows(8, ratio), 8, ratio)
    with pytest.raises(DataError, match=r"needs \['text'\] rows"):
        Trainer(load_train_recipe(recipe_file(tmp_path, 2), data=build, init=tiny_dir), tmp_path / "run")


def test_corrupt_image_stops_with_the_shard_and_row(tmp_path, tiny_dir):
    ratio = {"understanding": 1, "text": 0, "generation": 3}
    rows = sample_rows(32, ratio)
    rows[20]["image"] = {"bytes": b"\x89PNG not really", "path": "bad.png"}  # understanding row of step 3
    build = write_shards(tmp_path / "build", "stage1", rows, 8, ratio)
    recipe = load_train_recipe(recipe_file(tmp_path, 1, schedule__steps=4, checkpoint_every=1), data=build, init=tiny_dir)
    with pytest.raises(DataError, match=rf"shard-00000.parquet: row {rows[20]['sample_id']} has a corrupt image"):
        Trainer(recipe, tmp_path / "run").train()
    assert not (tmp_path / "run" / "final").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_dir, tiny_build):
    recipe = load_train_recipe(recipe_file(tmp_path, 1, schedule__steps=6, checkpoint_every=2), data=tiny_build, init=tiny_dir)
    trainer = Trainer(recipe, tmp_path / "run")
    calls = {"n": 0}

    def poison(module, args, output):  # the 4th forward (step 4) produces NaN
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 4 else output

    trainer.model.model.generation_head.register_forward_hook(poison)
    with pytest.raises(TrainingError, match=r"step 4: non-finite loss.*Last good checkpoint: .*step-00000002"):
        trainer.train()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000002"] and not (tmp_path / "run" / "final").exists()
    good = weights(tmp_path / "run" / "checkpoints" / "step-00000002")
    assert all(torch.isfinite(t).all() for t in good.values())


def test_recipe_errors_name_file_and_field(tmp_path):
    bad = recipe_file(tmp_path, 1, optim__lr=-1)
    with pytest.raises(ValueError, match=rf"{bad}: optim.lr: Input should be greater than 0"):
        load_train_recipe(bad, data=tmp_path, init=tmp_path)
    bad = recipe_file(tmp_path, 1, trainable=["aligner", "unet"])
    with pytest.raises(ValueError, match=r"trainable: Value error, unknown module groups \['unet'\]"):
        load_train_recipe(bad, data=tmp_path, init=tmp_path)
    raw = yaml.safe_load(bad.read_text()) | {"lr_decay": 0.1}
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="lr_decay: Extra inputs are not permitted"):
        load_train_recipe(bad, data=tmp_path, init=tmp_path)
