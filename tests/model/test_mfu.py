"""Model FLOPs from the config against torch's FLOP counter, and MFU / memory fields in train.jsonl."""

from __future__ import annotations

import json
import resource

import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model.config import load_train_recipe
from model.data import IGNORE
from model.flops import JanusFlops, StepTokens, peak_tflops
from model.freeze import apply_freezing
from model.metrics import StepCost
from model.train import Trainer
from pipeline.report import ReportContext
from pipeline.reports.training import render as training_section
from tests.model.test_train import ROOT, recipe_file


def paper_trainable(stage: int) -> list[str]:
    return yaml.safe_load((ROOT / f"recipes/train/janus-pro-1b/stage{stage}.yaml").read_text())["trainable"]


def linear_params(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def test_flops_equal_flop_counter_on_forward_backward(tmp_path, tiny_dir, tiny_build):
    """One real mixed micro-batch (understanding, text, generation rows) forward + backward, with the
    freezing of each paper stage: the count from the config must equal torch's count of the matmuls
    autograd ran, exactly (both are integer sums; tolerance 1e-9 relative)."""
    recipe = load_train_recipe(recipe_file(tmp_path, 2), data=tiny_build, init=tiny_dir)
    trainer = Trainer(recipe, tmp_path / "run")
    loader = trainer.loader(0)
    mb = next(iter(loader)).micro[0]
    loader.close()
    trainer.close()
    assert set(mb.tasks) == {"understanding", "text", "generation"} and mb.pixel_values is not None
    # FlopCounterMode has no formula for CPU's fused SDPA kernel; eager attention is plain bmm.
    trainer.model.set_attn_implementation("eager")
    rows, width = mb.input_ids.shape
    # What the hardware ran: every padded position; the heads score target positions only.
    ran = StepTokens(positions=rows * width, attention=rows * width**2, images=mb.pixel_values.shape[0],
                     text_targets=int((mb.labels[:, 1:] != IGNORE).sum()), image_targets=int((mb.gen_targets != IGNORE).sum()),
                     image_inputs=int((mb.gen_inputs >= 0).sum()))
    for stage in (1, 2, 3):
        trained = paper_trainable(stage)
        apply_freezing(trainer.model, trained)
        with FlopCounterMode(display=False) as counter:
            out = trainer.module(mb)
            sum(ce for ce, _ in out.values()).backward()
        trainer.model.zero_grad(set_to_none=True)
        counted = counter.get_total_flops()
        assert JanusFlops(trainer.model.config, set(trained)).step(ran) == pytest.approx(counted, rel=1e-9), stage
    # Stage I's LLM is frozen but still runs a backward (the aligners in front of it train): 4N, not
    # 2N or 6N; attention has no weights, so its 12 L d T is the same as when the LLM trains.
    config, text = trainer.model.config, trainer.model.config.text_config
    n_llm = linear_params(trainer.model.model.language_model)
    frozen = JanusFlops(config, set(paper_trainable(1))).parts(ran)["language_model"]
    trained = JanusFlops(config, set(paper_trainable(2))).parts(ran)["language_model"]
    # PaLM appendix B by hand: 6N per token + 12 L d T per token (here summed: 12 L d sum(T^2)).
    assert trained == 6 * n_llm * ran.positions + 12 * text.num_hidden_layers * text.hidden_size * ran.attention
    assert frozen == 4 * n_llm * ran.positions + 12 * text.num_hidden_layers * text.hidden_size * ran.attention


def test_peak_table_and_cpu_without_peak(tiny_dir):
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "fp32") == 19.5
    assert peak_tflops("Some Future GPU", "bf16") is None
    from transformers import JanusConfig

    config = JanusConfig.from_pretrained(tiny_dir)
    record = StepCost(config, {"language_model"}, "fp32", torch.device("cpu"), 1).record([10, 20], {"text": 2}, {"text": 28}, 0.5)
    assert record["mfu"] is None and record["tflops"] > 0 and record["flops_per_token"] > 0


def test_train_jsonl_carries_flops_mfu_and_memory(tmp_path, tiny_dir, tiny_build):
    peak = 0.5  # pretend this CPU peaks at 0.5 TFLOP/s: `peak_tflops` in the recipe gives an MFU anywhere
    recipe = load_train_recipe(recipe_file(tmp_path, 2, schedule__steps=3, peak_tflops=peak), data=tiny_build, init=tiny_dir)
    run = tmp_path / "train" / "stage2"
    trainer = Trainer(recipe, run)
    model = trainer.model
    trainer.train()
    records = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert len(records) == 3
    text, vision = model.config.text_config, model.config.vision_config
    # Stage II trains the LLM: at least 6N per token; at most 6 x every matmul weight (VQ aside) per
    # token plus attention over the longest allowed sequence and a whole image per position.
    n_all = linear_params(model) - linear_params(model.model.vqmodel)
    low = 6 * linear_params(model.model.language_model)
    high = (6 * n_all + 12 * text.num_hidden_layers * text.hidden_size * recipe.data.max_seq_len
            + 12 * vision.num_hidden_layers * vision.hidden_size * vision.num_image_tokens)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    for r in records:
        assert low < r["flops_per_token"] < high, r["flops_per_token"]
        assert r["model_flops"] == pytest.approx(r["flops_per_token"] * r["tokens"])  # per position, padding not counted
        seconds = r["step_time"] + r["data_wait"]
        assert r["tflops"] == pytest.approx(r["model_flops"] / seconds / 1e12)
        assert 0 < r["tflops"] < 5  # two CPU cores do not reach 5 TFLOP/s
        assert r["peak_tflops"] == peak and r["mfu"] == pytest.approx(r["tflops"] / peak)
        assert 0.05 < r["peak_mem_gib"] <= rss_gib + 1e-6  # peak RSS of this process so far
    summary = json.loads((run / "summary.json").read_text())
    steady = records[1:]
    tflops = sum(r["model_flops"] for r in steady) / sum(r["step_time"] + r["data_wait"] for r in steady) / 1e12
    assert summary["tflops"] == pytest.approx(tflops) and summary["mfu"] == pytest.approx(tflops / peak)
    assert summary["peak_mem_gib"] == max(r["peak_mem_gib"] for r in records)
    assert low < summary["flops_per_token"] < high
    # The report's training section shows them per stage.
    html = training_section(ReportContext(build_dir=tiny_build, con=None, train_dir=tmp_path / "train"))
    assert "MFLOP/token" in html and f"{100 * summary['mfu']:.1f}%" in html and f"{summary['peak_mem_gib']:.2f}" in html
