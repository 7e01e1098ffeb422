"""Per-task training losses for JanusForConditionalGeneration, including the image-generation loss.

transformers' forward only scores text through `lm_head`; the generation loss (VQ ids through
generation embeddings -> generation aligner -> LLM -> generation head) is written here. One LLM
forward serves a mixed micro-batch: understanding images are scattered into their placeholder
positions, generation ids are embedded after the BOI token, and each position is scored by the
head of its task.

Packed micro-batches (model/data.py) carry several examples per row: each keeps its own position
ids, and attention is block-diagonal causal (a position sees earlier positions of its own example
only), so every example's hidden states, and so its loss, are those of the example run alone.

Loss normalisation. The step loss is

    L = sum over tasks t of  w_t * (sum of token CE of task t) / N_t

with w_t = the task's share of the step's rows (the recipe ratio, exact per step) and N_t = the
target tokens of task t in the whole global batch (answer tokens for understanding, all tokens
after BOS for text, the image ids for generation). Within a task this is the paper's token-level
objective: every target token counts the same, whatever row, micro-batch, worker or pack it sits
in. Across tasks it is not a plain token mean: that would weight a task by its target tokens, and
a generation row (576 image ids at 384 px) outweighs an understanding answer (tens of tokens)
some twentyfold, so the gradient would no longer follow the data ratio the paper tunes per stage
(Table 2). The paper states the objective as next-token cross-entropy and the ratios as data
ratios, and does not publish how the task terms are reduced (the released Janus code has no
trainer); weighting each task's token mean by its row share keeps the ratio meaningful and
makes the loss independent of layout (padding, packing, micro-batch split).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.data import IGNORE, MicroBatch
from pipeline.schema import TASKS

TaskSums = dict[str, tuple[torch.Tensor, torch.Tensor]]  # task -> (sum of token CE, token count)


class JanusLoss(nn.Module):
    """Wraps the model so DDP/FSDP see one forward: micro-batch in, per-task (CE sum, count) out."""

    def __init__(self, model: nn.Module, touch_all: bool = False):
        super().__init__()
        self.model = model
        # FSDP reduce-scatters only parameters that got a gradient; a worker whose micro-batch
        # lacks a task would then send a different-sized collective. touch_all runs every path
        # (times zero) so all workers reduce the same parameters.
        self.touch_all = touch_all

    def forward(self, mb: MicroBatch) -> TaskSums:
        inner = self.model.model  # JanusModel: vision_model, aligner, generation_*, language_model
        embeds = inner.get_input_embeddings()(mb.input_ids)
        if mb.pixel_values is not None:
            feats = inner.get_image_features(mb.pixel_values.to(embeds.dtype)).pooler_output
            slots = (mb.input_ids == self.model.config.image_token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(slots, feats.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        gen_slots = mb.gen_inputs >= 0
        if gen_slots.any():
            gen = self.model.prepare_embeddings_for_image_generation(mb.gen_inputs[gen_slots])
            embeds = embeds.masked_scatter(gen_slots.unsqueeze(-1), gen.to(embeds.dtype))
        if mb.packed:
            mask = block_causal_mask(mb.sequence_ids, inner.language_model.config._attn_implementation, embeds.dtype)
            hidden = inner(inputs_embeds=embeds, attention_mask=mask, position_ids=mb.position_ids).last_hidden_state
        else:
            hidden = inner(inputs_embeds=embeds, attention_mask=mb.attention_mask).last_hidden_state
        out = task_losses(self.model, hidden, mb)
        if self.touch_all:
            zero = self._unused_paths(mb, hidden)
            task = next(iter(out))
            out[task] = (out[task][0] + zero, out[task][1])
        return out

    def _unused_paths(self, mb: MicroBatch, hidden: torch.Tensor) -> torch.Tensor:
        """0 x (the output of each path this micro-batch did not use): gradients of exact zeros."""
        inner, terms = self.model.model, []
        if mb.pixel_values is None:
            size = self.model.config.vision_config.image_size
            pixels = hidden.new_zeros(1, 3, size, size)
            terms.append(inner.get_image_features(pixels).pooler_output.sum())
        if not (mb.gen_inputs >= 0).any():
            gen = self.model.prepare_embeddings_for_image_generation(mb.input_ids.new_zeros(1))
            terms.append(gen.sum() + inner.generation_head(hidden[:1, 0]).sum())
        if not (mb.labels != IGNORE).any():
            terms.append(self.model.lm_head(hidden[:1, 0]).sum())
        return sum(terms, hidden.new_zeros(())) * 0.0


def block_causal_mask(sequence_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, T, T] mask for a packed batch: position q sees key k iff k <= q in the same example.

    transformers uses a 4D mask as given. sdpa takes it as bool (True = attend); eager adds it
    to the scores, so it gets 0 / dtype-min. Padding is one block of its own (sequence id -1):
    every row of the mask keeps at least its diagonal, so no softmax runs over nothing.
    """
    same = sequence_ids[:, :, None] == sequence_ids[:, None, :]
    width = sequence_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=sequence_ids.device).tril()
    allowed = (same & causal)[:, None]
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
    raise ValueError(f"batch.packing supports attn_implementation 'sdpa' or 'eager', the model uses {attn_implementation!r}")


def task_losses(model: nn.Module, hidden: torch.Tensor, mb: MicroBatch) -> TaskSums:
    """Token CE summed per task. Only scored positions go through the (100K-wide) heads."""
    out: TaskSums = {}
    # Text: position t predicts labels[t + 1] (answers of understanding rows, all of a text row).
    targets = mb.labels[:, 1:]
    scored = targets != IGNORE
    if scored.any():
        logits = model.lm_head(hidden[:, :-1][scored]).float()
        ce = F.cross_entropy(logits, targets[scored], reduction="none")
        _add(out, mb.task_ids[:, 1:][scored], ce)
    # Generation: position t (BOI, then each fed VQ id) predicts gen_targets[t].
    scored = mb.gen_targets != IGNORE
    if scored.any():
        logits = model.model.generation_head(hidden[scored]).float()
        ce = F.cross_entropy(logits, mb.gen_targets[scored], reduction="none")
        _add(out, mb.task_ids[scored], ce)
    return out


def _add(out: TaskSums, task_of_token: torch.Tensor, ce: torch.Tensor) -> None:
    for i, task in enumerate(TASKS):
        sel = task_of_token == i
        if sel.any():
            total, count = out.get(task, (ce.new_zeros(()), ce.new_zeros(())))
            out[task] = (total + ce[sel].sum(), count + sel.sum())


def combine(sums: TaskSums, weights: dict[str, float], counts: dict[str, int]) -> torch.Tensor:
    """Step loss = sum_task w_task * (token-mean CE of the task over the whole global batch).

    `counts` are the global batch's target tokens per task, so splitting the batch into
    micro-batches, workers or packs does not change the gradient (see the module docstring).
    """
    total = None
    for task, (ce_sum, _) in sums.items():
        term = ce_sum * (weights[task] / counts[task])
        total = term if total is None else total + term
    return total
