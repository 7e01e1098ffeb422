"""Per-task training losses for JanusForConditionalGeneration, including the image-generation loss.

transformers' forward only scores text through `lm_head`; the generation loss (VQ ids through
generation embeddings -> generation aligner -> LLM -> generation head) is written here. One LLM
forward serves a mixed micro-batch: understanding images are scattered into their placeholder
positions, generation ids are embedded after the BOI token, and each position is scored by the
head of its task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.data import IGNORE, MicroBatch

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


def task_losses(model: nn.Module, hidden: torch.Tensor, mb: MicroBatch) -> TaskSums:
    """Token CE summed per task. Only scored positions go through the (100K-wide) heads."""
    tasks = sorted(set(mb.tasks))
    row_task = torch.tensor([tasks.index(t) for t in mb.tasks], device=hidden.device)
    out: TaskSums = {}
    # Text: position t predicts labels[t + 1] (answers of understanding rows, all of a text row).
    targets = mb.labels[:, 1:]
    scored = targets != IGNORE
    if scored.any():
        logits = model.lm_head(hidden[:, :-1][scored]).float()
        ce = F.cross_entropy(logits, targets[scored], reduction="none")
        _add(out, tasks, row_task[:, None].expand_as(targets)[scored], ce)
    # Generation: position t (BOI, then each fed VQ id) predicts gen_targets[t].
    scored = mb.gen_targets != IGNORE
    if scored.any():
        logits = model.model.generation_head(hidden[scored]).float()
        ce = F.cross_entropy(logits, mb.gen_targets[scored], reduction="none")
        _add(out, tasks, row_task[:, None].expand_as(mb.gen_targets)[scored], ce)
    return out


def _add(out: TaskSums, tasks: list[str], task_of_token: torch.Tensor, ce: torch.Tensor) -> None:
    for i, task in enumerate(tasks):
        sel = task_of_token == i
        if sel.any():
            total, count = out.get(task, (ce.new_zeros(()), ce.new_zeros(())))
            out[task] = (total + ce[sel].sum(), count + sel.sum())


def combine(sums: TaskSums, weights: dict[str, float], counts: dict[str, int]) -> torch.Tensor:
    """Step loss = sum_task w_task * (token-mean CE of the task over the whole global batch).

    `counts` are the global batch's target tokens per task, so splitting the batch into
    micro-batches or workers does not change the gradient.
    """
    total = None
    for task, (ce_sum, _) in sums.items():
        term = ce_sum * (weights[task] / counts[task])
        total = term if total is None else total + term
    return total
