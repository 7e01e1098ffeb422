"""Sequence packing: a packed batch gives each example exactly the loss and gradient it has alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.config import load_train_recipe
from model.data import IGNORE, Encoder, collate, micro_batches, pack, packed_micro_count
from model.losses import JanusLoss, combine
from model.tiny import load_janus
from model.train import Trainer
from pipeline.schema import TASKS
from tests.model.conftest import sample_rows
from tests.model.test_train import recipe_file

PACK_LEN = 256  # the tiny recipes' data.max_seq_len


def mixed_examples(processor, n: int = 10, cfg_drop: float = 0.3) -> list:
    """Understanding (with images), text and generation (VQ ids) rows, some prompts CFG-dropped."""
    enc = Encoder(processor, PACK_LEN, cfg_drop, seed=0, num_image_tokens=processor.num_image_tokens)
    rng = np.random.default_rng(3)
    ids = [rng.integers(0, 256, processor.num_image_tokens).tolist() for _ in range(4)]
    rows = sample_rows(n, {"understanding": 1, "text": 2, "generation": 2}, seed=5, image_tokens=ids, with_image=False)
    # Two short text rows: best-fit decreasing tops up an understanding + generation row with one.
    for row, text in zip([row for row in rows if row["task"] == "text"], ["A cat.", "A dog."]):
        row["text"] = text
    return enc, [enc.encode(r, i) for i, r in enumerate(rows)]


def loss_and_grads(model, micro: list, weights: dict, counts: dict) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    sums = {t: [0.0, 0] for t in weights}
    for mb in micro:
        out = JanusLoss(model)(mb)
        combine(out, weights, counts).backward()
        for task, (ce, n) in out.items():
            sums[task][0] += ce.item()
            sums[task][1] += int(n)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return sums, grads


@pytest.fixture(scope="module")
def tiny_fp32(tiny_dir):
    model, processor = load_janus(tiny_dir, dtype=torch.float32)
    model.eval()  # no dropout; gradients still flow
    return model, processor


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packing_loss_and_gradients_equal_unpadded_per_example(tiny_fp32, attn):
    model, processor = tiny_fp32
    model.set_attn_implementation(attn)
    try:
        enc, examples = mixed_examples(processor)
        weights = {"understanding": 0.2, "text": 0.4, "generation": 0.4}
        counts = {t: sum(ex.targets for ex in examples if ex.task == t) for t in TASKS}
        micro = micro_batches(examples, 8, enc.pad, processor.image_processor, pack_len=PACK_LEN)
        mb = micro[0]
        assert len(micro) == 1 and mb.packed and mb.input_ids.shape[1] <= PACK_LEN
        assert mb.pixel_values is not None and (mb.gen_targets != IGNORE).sum() == 4 * processor.num_image_tokens
        # at least one packed row mixes all three tasks
        assert any({int(t) for t in row.unique()} >= {0, 1, 2} for row in mb.task_ids)
        assert len(mb.tasks) == len(examples) and mb.input_ids.shape[0] < len(examples)
        packed_sums, packed_grads = loss_and_grads(model, micro, weights, counts)
        # reference: every example alone, unpadded (a batch of one, no mask, default positions)
        alone = [collate([ex], enc.pad, processor.image_processor) for ex in examples]
        assert all(bool(a.attention_mask.all()) for a in alone)
        ref_sums, ref_grads = loss_and_grads(model, alone, weights, counts)
    finally:
        model.set_attn_implementation("sdpa")
    for task in TASKS:
        assert packed_sums[task][1] == ref_sums[task][1] == counts[task] > 0
        assert packed_sums[task][0] == pytest.approx(ref_sums[task][0], rel=1e-5)
    assert packed_grads.keys() == ref_grads.keys()
    # the paths every task trains: SigLIP + aligner (understanding), generation embeddings/aligner/head
    for prefix in ("model.vision_model.", "model.aligner.", "model.generation_embeddings.", "model.generation_aligner.",
                   "model.generation_head.", "model.language_model.", "lm_head."):
        assert any(name.startswith(prefix) and g.abs().sum() > 0 for name, g in packed_grads.items()), prefix
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_packing_layout_isolates_examples(tiny_fp32):
    _, processor = tiny_fp32
    enc, examples = mixed_examples(processor, n=20)
    rows = pack(examples, PACK_LEN)
    assert sorted(id(ex) for row in rows for ex in row) == sorted(id(ex) for ex in examples)  # each exactly once
    assert all(sum(ex.length for ex in row) <= PACK_LEN for row in rows)
    mb = micro_batches(examples, 64, enc.pad, processor.image_processor, pack_len=PACK_LEN)[0]
    for r, row in enumerate(rows):
        start = 0
        for k, ex in enumerate(row):
            span = slice(start, start + ex.length)
            assert mb.position_ids[r, span].tolist() == list(range(ex.length))  # positions restart per example
            assert (mb.sequence_ids[r, span] == k).all() and (mb.task_ids[r, span] == TASKS.index(ex.task)).all()
            assert mb.labels[r, start] == IGNORE  # the previous example's last position scores nothing here
            start += ex.length
        assert (mb.sequence_ids[r, start:] == -1).all() and (mb.attention_mask[r, start:] == 0).all()
    # the understanding images follow their placeholders in layout order
    und = [ex for row in rows for ex in row if ex.task == "understanding"]
    assert mb.pixel_values.shape[0] == len(und)


def test_packing_runs_the_same_forward_count_on_every_worker(tiny_fp32):
    _, processor = tiny_fp32
    enc, examples = mixed_examples(processor, n=16)
    short = [ex for ex in examples if ex.task == "text"]  # one worker packs into far fewer rows
    long = [ex for ex in examples if ex.task != "text"]
    lengths = [[ex.length for ex in short], [ex.length for ex in long]]
    count = packed_micro_count(lengths, micro=1, pack_len=PACK_LEN)
    assert count == len(pack(long, PACK_LEN)) > len(pack(short, PACK_LEN))
    for share in (short, long):
        micro = micro_batches(share, 1, enc.pad, processor.image_processor, pack_len=PACK_LEN, count=count)
        assert len(micro) == count and sorted(t for mb in micro for t in mb.tasks) == sorted(ex.task for ex in share)


def test_packing_recipe_switch_trains_the_same_step(tmp_path, tiny_dir, tiny_build):
    """batch.packing true/false: same rows per step, same first-step loss (layout only)."""
    records = {}
    for packing in (False, True):
        path = recipe_file(tmp_path, 2, schedule__steps=2, batch__packing=packing, checkpoint_every=100)
        out = tmp_path / f"run-{packing}"
        Trainer(load_train_recipe(path, data=tiny_build, init=tiny_dir), out).train()
        records[packing] = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    padded, packed = records[False], records[True]
    assert [r["rows"] for r in padded] == [r["rows"] for r in packed]
    assert [r["tokens"] for r in padded] == [r["tokens"] for r in packed]
    for task, value in padded[0]["loss"].items():
        assert packed[0]["loss"][task] == pytest.approx(value, rel=1e-5)
    assert packed[0]["grad_norm"] == pytest.approx(padded[0]["grad_norm"], rel=1e-4)
    assert load_train_recipe(recipe_file(tmp_path, 2)).batch.packing is False  # default: padded


def test_packing_mask_blocks_examples_and_refuses_other_attention_kernels():
    from model.losses import block_causal_mask

    seq = torch.tensor([[0, 0, 1, 1, 1, -1]])
    allowed = block_causal_mask(seq, "sdpa", torch.float32)[0, 0]
    assert allowed.dtype == torch.bool and allowed.diagonal().all()  # padding attends to itself: no empty softmax
    assert allowed[3].tolist() == [False, False, True, True, False, False]  # own example, causal
    eager = block_causal_mask(seq, "eager", torch.float32)[0, 0]
    assert (eager[allowed] == 0).all() and (eager[~allowed] == torch.finfo(torch.float32).min).all()
    with pytest.raises(ValueError, match="flash_attention_2"):
        block_causal_mask(seq, "flash_attention_2", torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_packing_two_ray_workers_match_one_process(fsdp, tmp_path, tiny_dir, tiny_build):
    """Packed, one row per forward: workers pack to different row counts, yet run the same number
    of forwards (FSDP syncs on each) and reproduce the single-process packed run."""
    ray = pytest.importorskip("ray")
    from model.distributed import run_distributed

    # tiny_build stage2, step 2: the two workers pack their 8 rows into 3 and 4 rows of 256
    path = recipe_file(tmp_path, 2, schedule__steps=2, batch__micro=1, batch__packing=True, fsdp=fsdp)
    recipe = load_train_recipe(path, data=tiny_build, init=tiny_dir)
    Trainer(recipe, tmp_path / "one").train()
    try:
        run_distributed(recipe, tmp_path / "two", resume=False, workers=2, use_gpu=False)
    finally:
        ray.shutdown()
    one = [json.loads(line) for line in (tmp_path / "one" / "train.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "train.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert a["rows"] == b["rows"] and (a["workers"], b["workers"]) == (1, 2)
        for task in a["loss"]:
            assert b["loss"][task] == pytest.approx(a["loss"][task], rel=1e-4)
