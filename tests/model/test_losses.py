"""Losses: the generation loss against a hand-computed autoregressive reference, text losses against transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.data import IGNORE, Encoder, collate
from model.generate import encode_image_tokens
from model.data import generation_pixels, decode_image
from model.losses import JanusLoss, combine
from model.tiny import load_janus
from tests.model.conftest import sample_rows


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    model, processor = load_janus(tiny_dir)
    model.eval()
    return model, processor


def encoder(processor, cfg_drop=0.0):
    return Encoder(processor, 256, cfg_drop, seed=0, num_image_tokens=processor.num_image_tokens)


def gen_rows(n=3):
    rng = np.random.default_rng(1)
    ids = [rng.integers(0, 256, 64).tolist() for _ in range(n)]
    return sample_rows(n, {"generation": 1}, image_tokens=ids, with_image=False)


@torch.no_grad()
def reference_generation_nll(model, prefix_ids: list[int], image_ids: list[int]) -> float:
    """By hand, the way generate() samples: prefill the prompt with the KV cache, then feed one
    VQ id at a time through generation embeddings + aligner, scoring each next id with the head."""
    lm = model.model.language_model
    out = lm(input_ids=torch.tensor([prefix_ids]), use_cache=True)
    cache, hidden, nll = out.past_key_values, out.last_hidden_state[:, -1], 0.0
    for token in image_ids:
        logp = torch.log_softmax(model.model.generation_head(hidden).float(), dim=-1)
        nll -= logp[0, token].item()
        embeds = model.model.generation_aligner(model.model.generation_embeddings(torch.tensor([[token]])))
        out = lm(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
        cache, hidden = out.past_key_values, out.last_hidden_state[:, -1]
    return nll / len(image_ids)


def test_generation_loss_matches_autoregressive_reference(tiny):
    model, processor = tiny
    enc = encoder(processor)
    examples = [enc.encode(r, i) for i, r in enumerate(gen_rows())]
    # rows of different prompt lengths: right padding must not change any row's loss
    assert len({len(e.input_ids) for e in examples}) > 1
    with torch.no_grad():
        batched = JanusLoss(model)(collate(examples, enc.pad, processor.image_processor))
        for ex in examples:
            single = JanusLoss(model)(collate([ex], enc.pad, processor.image_processor))["generation"]
            ours = (single[0] / single[1]).item()
            assert single[1].item() == 64  # the tiny preset's 8x8 grid
            assert ours == pytest.approx(reference_generation_nll(model, ex.input_ids, ex.image_ids), rel=1e-4)
    ref = np.mean([reference_generation_nll(model, e.input_ids, e.image_ids) for e in examples])
    assert (batched["generation"][0] / batched["generation"][1]).item() == pytest.approx(ref, rel=1e-4)


def test_text_losses_match_transformers_forward(tiny):
    """Understanding/text: our per-position scoring equals JanusForConditionalGeneration(labels=...)."""
    model, processor = tiny
    enc = encoder(processor)
    rows = sample_rows(4, {"understanding": 1, "text": 1})
    examples = [enc.encode(r, i) for i, r in enumerate(rows)]
    und = examples[0]
    answer = processor.tokenizer.decode([t for t in und.labels if t != IGNORE])
    assert answer.startswith(" The chart shows") and answer.endswith(processor.tokenizer.eos_token)
    assert all(t == IGNORE for t, i in zip(und.labels, und.input_ids) if i == model.config.image_token_id)
    with torch.no_grad():
        ours = JanusLoss(model)(collate(examples, enc.pad, processor.image_processor))
        und_ref, text_ref = [], []
        for ex in examples:
            mb = collate([ex], enc.pad, processor.image_processor)
            out = model(input_ids=mb.input_ids, pixel_values=mb.pixel_values, labels=mb.labels)
            (und_ref if ex.task == "understanding" else text_ref).append((out.loss.item(), ex.targets))
    for task, refs in (("understanding", und_ref), ("text", text_ref)):
        expected = sum(l * n for l, n in refs) / sum(n for _, n in refs)  # token mean over the task
        assert (ours[task][0] / ours[task][1]).item() == pytest.approx(expected, rel=1e-4)


def test_combine_is_independent_of_micro_batch_split(tiny):
    """Gradient of the step loss is the same whether the batch is one micro-batch or four."""
    model, processor = tiny
    enc = encoder(processor)
    rng = np.random.default_rng(2)
    ids = [rng.integers(0, 256, 64).tolist() for _ in range(4)]
    rows = sample_rows(8, {"understanding": 1, "text": 1, "generation": 2}, image_tokens=ids)
    examples = [enc.encode(r, i) for i, r in enumerate(rows)]
    weights = {"understanding": 0.25, "text": 0.25, "generation": 0.5}
    counts = {t: sum(e.targets for e in examples if e.task == t) for t in weights}
    head = model.model.generation_head.vision_head.weight

    def grad(split):
        model.zero_grad()
        for i in range(0, len(examples), split):
            combine(JanusLoss(model)(collate(examples[i : i + split], enc.pad, processor.image_processor)), weights, counts).backward()
        return head.grad.clone(), model.lm_head.weight.grad.clone()

    whole, parts = grad(8), grad(2)
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cfg_drop_builds_the_inference_unconditional_row(tiny):
    model, processor = tiny
    from model.generate import generation_prompt

    row = gen_rows(1)[0]
    cond = processor(text=[generation_prompt(processor, row["prompt"])], generation_mode="image")["input_ids"][0].tolist()
    assert encoder(processor).encode(row, 0).input_ids == cond  # same tokens as inference
    # generate() builds the unconditional row: every token but BOS and BOI becomes pad
    gc = model.generation_config
    uncond = [t if t in (gc.bos_token_id, gc.generation_kwargs["boi_token_id"]) else gc.pad_token_id for t in cond]
    always = encoder(processor, cfg_drop=0.999999)
    assert always.encode(row, 0).input_ids == uncond
    half = encoder(processor, cfg_drop=0.1)
    drops = [half.dropped(i) for i in range(4000)]
    assert 0.08 < np.mean(drops) < 0.12
    assert drops == [half.dropped(i) for i in range(4000)]  # deterministic: resume replays it


def test_on_the_fly_vq_ids_equal_vq_encode(tiny):
    model, processor = tiny
    row = sample_rows(1, {"generation": 1})[0]
    pixels = generation_pixels([decode_image(row)], processor.image_processor)
    ids, grid = encode_image_tokens(model, pixels)
    assert grid == (8, 8) and ids.shape == (1, 64)
    assert pixels.shape[-1] == 32 and pixels.min() >= -1 and pixels.max() <= 1
