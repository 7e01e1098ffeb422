"""Shard rows -> token/image examples per task -> micro-batches (with CFG prompt drop).

Two layouts of the same examples (`batch.packing` in the recipe picks one):
- padded (`collate`): one example per row, right-padded to the longest row of the micro-batch;
- packed (`collate_packed`, paper §3.1 "sequence packing"): several examples per row, up to
  `max_seq_len` positions, placed by best-fit decreasing. Each example keeps its own position ids
  (0, 1, ...) and a `sequence_ids` row tells the loss which positions may attend to which (a
  block-diagonal causal mask, model/losses.py), so a packed example sees exactly what it would see
  alone. Packing changes the layout only: a step trains on the same rows either way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from PIL import Image, ImageOps

from model.shards import DataError
from pipeline.schema import TASKS
from stages.image_checks import ImageRejected, decode

IGNORE = -100  # torch cross_entropy's ignore_index: prompt, image positions and padding


@dataclass
class Example:
    """One row as token ids; generation rows also carry their VQ ids after the text prefix."""

    task: str
    sample_id: str
    input_ids: list[int]
    labels: list[int]  # same length as input_ids; IGNORE where no loss
    image: Image.Image | None = None  # understanding image (goes through SigLIP)
    image_ids: list[int] = field(default_factory=list)  # generation targets (VQ ids)

    @property
    def length(self) -> int:
        # The last VQ id is only a target, never an input.
        return len(self.input_ids) + max(len(self.image_ids) - 1, 0)

    @property
    def targets(self) -> int:
        return len(self.image_ids) if self.task == "generation" else sum(1 for t in self.labels if t != IGNORE)


class ImageDataError(DataError):
    """A row's image could not be decoded; `reason` is the decoder's (e.g. `decompression_bomb`)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def decode_image(row: dict[str, Any]) -> Image.Image:
    image = row.get("image") or {}
    data = image.get("bytes")
    if not data:
        raise DataError(f"{row.get('shard')}: row {row['sample_id']} ({row['task']}) has no image bytes")
    try:
        return decode(data)  # the project's one decoder: same bomb limit as the data stages
    except ImageRejected as err:
        raise ImageDataError(f"{row.get('shard')}: row {row['sample_id']} has a corrupt image: {err.reason}: {err}", err.reason) from None


def generation_pixels(images: list[Image.Image], image_processor) -> torch.Tensor:
    """Paper: generation images are resized on the short side and centre-cropped (no padding)."""
    size = image_processor.size["height"]
    square = [ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC) for img in images]
    return image_processor(images=square, return_tensors="pt")["pixel_values"]


class Encoder:
    """Turns shard rows into Examples with the Janus chat format (deepseek-ai/Janus sft_format)."""

    def __init__(self, processor, max_seq_len: int, cfg_drop: float, seed: int, num_image_tokens: int):
        self.processor = processor
        self.tok = processor.tokenizer
        self.max_seq_len = max_seq_len
        self.cfg_drop = cfg_drop
        self.seed = seed
        ids = self.tok.convert_tokens_to_ids
        self.bos, self.eos, self.pad = self.tok.bos_token_id, self.tok.eos_token_id, self.tok.pad_token_id
        self.boi, self.eoi = ids(processor.image_start_token), ids(processor.image_end_token)
        self.image_token = ids(processor.image_token)
        self.num_image_tokens = num_image_tokens
        self.system = getattr(processor, "use_default_system_prompt", False)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] if text else []

    def _user(self, content: str) -> list[int]:
        """A user turn; each <image_placeholder> becomes BOI + N image positions + EOI."""
        parts = content.split(self.processor.image_token)
        out = self._ids("<|User|>: " + parts[0])
        for part in parts[1:]:
            out += [self.boi] + [self.image_token] * self.num_image_tokens + [self.eoi] + self._ids(part)
        return out + self._ids("\n\n")

    def encode(self, row: dict[str, Any], index: int, with_image: bool = True) -> Example:
        """`index` is the row's global position (seeds its CFG drop); `with_image=False` only tokenises."""
        task = row["task"]
        if task == "understanding":
            return self._understanding(row, with_image)
        if task == "text":
            ids = [self.bos] + self._ids(row.get("text") or "") + [self.eos]
            return self._fit(Example(task, row["sample_id"], ids, [IGNORE] + ids[1:]))
        if task == "generation":
            return self._generation(row, index, with_image)
        raise DataError(f"{row.get('shard')}: row {row['sample_id']} has unknown task {task!r}")

    def _understanding(self, row: dict[str, Any], with_image: bool) -> Example:
        from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

        ids = [self.bos] + (self._ids(DEFAULT_SYSTEM_PROMPT) if self.system else [])
        labels = [IGNORE] * len(ids)
        turns = row.get("conversation") or []
        placeholders = sum(t["content"].count(self.processor.image_token) for t in turns)
        if placeholders != 1 or not any(t["role"] == "assistant" for t in turns):
            raise DataError(f"{row.get('shard')}: understanding row {row['sample_id']} needs one image placeholder "
                            f"and an assistant turn (found {placeholders} placeholders)")
        for turn in turns:
            if turn["role"] == "assistant":
                head, answer = self._ids("<|Assistant|>:"), self._ids(" " + turn["content"].strip()) + [self.eos]
                ids += head + answer
                labels += [IGNORE] * len(head) + answer
            else:
                user = self._user(turn["content"])
                ids += user
                labels += [IGNORE] * len(user)
        return self._fit(Example("understanding", row["sample_id"], ids, labels, image=decode_image(row) if with_image else None))

    def _generation(self, row: dict[str, Any], index: int, with_image: bool) -> Example:
        prompt = self._ids("<|User|>: " + (row.get("prompt") or "").strip() + "\n\n<|Assistant|>:")
        if self.dropped(index):
            # The unconditional row of Janus CFG: every prompt token but BOS/BOI becomes pad.
            prompt = [self.pad] * len(prompt)
        ids = [self.bos] + prompt + [self.boi]
        example = Example("generation", row["sample_id"], ids, [IGNORE] * len(ids))
        if row.get("image_tokens") is not None:
            example.image_ids = [int(t) for t in row["image_tokens"]]
            if len(example.image_ids) != self.num_image_tokens:
                raise DataError(f"{row.get('shard')}: row {row['sample_id']} has {len(example.image_ids)} image tokens, "
                                f"the model generates {self.num_image_tokens} (VQ-tokenised with another model?)")
        elif with_image:
            example.image = decode_image(row)  # encoded to VQ ids on the fly (no pre-tokenisation)
        return self._fit(example)

    def dropped(self, index: int) -> bool:
        """Deterministic per (seed, global row index): resume replays the same drops."""
        digest = hashlib.sha256(f"{self.seed}:{index}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.cfg_drop

    def _fit(self, ex: Example) -> Example:
        extra = ex.length - self.max_seq_len
        if extra > 0:
            if ex.task == "generation" or self.image_token in ex.input_ids[-extra:]:
                raise DataError(f"row {ex.sample_id} ({ex.task}) needs {ex.length} positions > max_seq_len {self.max_seq_len}")
            ex.input_ids, ex.labels = ex.input_ids[: -extra], ex.labels[: -extra]
        return ex


@dataclass
class MicroBatch:
    """Tensors for one forward; `gen_*` mark positions fed/predicted by the image path."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T] 1 = a real position, 0 = padding
    labels: torch.Tensor  # [B, T] text targets, unshifted (HF convention)
    gen_inputs: torch.Tensor  # [B, T] VQ id whose generation embedding goes at this position, -1 = none
    gen_targets: torch.Tensor  # [B, T] VQ id predicted from this position's hidden state, IGNORE = none
    pixel_values: torch.Tensor | None  # [n_und_examples, 3, H, W] in the order their placeholders appear
    tasks: list[str]  # task of each example, in layout order
    task_ids: torch.Tensor  # [B, T] TASKS index of the example owning each position, -1 = padding
    # Packed layout only (None when padded): per-example positions and which example owns a position.
    position_ids: torch.Tensor | None = None  # [B, T] restarts at 0 for every example
    sequence_ids: torch.Tensor | None = None  # [B, T] example index within the row, -1 = padding

    def to(self, device: torch.device) -> MicroBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(move(self.input_ids), move(self.attention_mask), move(self.labels), move(self.gen_inputs),
                          move(self.gen_targets), move(self.pixel_values), self.tasks, move(self.task_ids),
                          move(self.position_ids), move(self.sequence_ids))

    @property
    def packed(self) -> bool:
        return self.sequence_ids is not None


def _layout(rows: list[list[Example]], pad_id: int, image_processor, packed: bool) -> MicroBatch:
    """Place each row's examples one after another from position 0, pad the rest."""
    width = max(sum(ex.length for ex in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    attention = torch.zeros(shape, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    gen_inputs = torch.full(shape, -1, dtype=torch.long)
    gen_targets = torch.full(shape, IGNORE, dtype=torch.long)
    task_ids = torch.full(shape, -1, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    sequence_ids = torch.full(shape, -1, dtype=torch.long)
    for i, row in enumerate(rows):
        start = 0
        for k, ex in enumerate(row):
            n, end = len(ex.input_ids), start + ex.length
            input_ids[i, start : start + n] = torch.tensor(ex.input_ids)
            labels[i, start : start + n] = torch.tensor(ex.labels)
            # Position `start - 1` (the previous example's last) scores labels[start]: never a target,
            # so no loss crosses from one example into the next.
            labels[i, start] = IGNORE
            attention[i, start:end] = 1
            task_ids[i, start:end] = TASKS.index(ex.task)
            position_ids[i, start:end] = torch.arange(ex.length)
            sequence_ids[i, start:end] = k
            if ex.image_ids:
                ids = torch.tensor(ex.image_ids)
                gen_inputs[i, start + n : start + n + len(ids) - 1] = ids[:-1]
                gen_targets[i, start + n - 1 : start + n - 1 + len(ids)] = ids  # BOI predicts the first id
            start = end
        # Padding continues the positions of a block of its own: it attends only to itself.
        position_ids[i, start:] = torch.arange(width - start)
    examples = [ex for row in rows for ex in row]
    images = [ex.image for ex in examples if ex.task == "understanding"]
    pixels = image_processor(images=images, return_tensors="pt")["pixel_values"] if images else None
    tasks = [ex.task for ex in examples]
    if not packed:
        return MicroBatch(input_ids, attention, labels, gen_inputs, gen_targets, pixels, tasks, task_ids)
    return MicroBatch(input_ids, attention, labels, gen_inputs, gen_targets, pixels, tasks, task_ids,
                      position_ids, sequence_ids)


def collate(examples: list[Example], pad_id: int, image_processor) -> MicroBatch:
    """Padded layout: one example per row, right-padded to the longest."""
    return _layout([[ex] for ex in examples], pad_id, image_processor, packed=False)


def collate_packed(packs: list[list[Example]], pad_id: int, image_processor) -> MicroBatch:
    """Packed layout: each inner list is one row (see `pack`), right-padded to the fullest row."""
    return _layout(packs, pad_id, image_processor, packed=True)


def pack(examples: list[Example], capacity: int) -> list[list[Example]]:
    """Best-fit decreasing: longest example first, into the open row it fills most tightly.

    Deterministic (ties keep input order). Every example lands in exactly one row; an example
    longer than `capacity` cannot happen (Encoder._fit truncates or rejects at max_seq_len).
    """
    for ex in examples:
        if ex.length > capacity:
            raise DataError(f"row {ex.sample_id} ({ex.task}) needs {ex.length} positions > pack length {capacity}")
    return [[examples[i] for i in row] for row in pack_lengths([ex.length for ex in examples], capacity)]


def pack_lengths(lengths: list[int], capacity: int) -> list[list[int]]:
    """`pack` on bare lengths: rows of indices into `lengths`."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # sorted() is stable
        fits = [r for r, room in enumerate(free) if room >= lengths[i]]
        if fits:
            best = min(fits, key=lambda r: free[r])
            rows[best].append(i)
            free[best] -= lengths[i]
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def micro_batches(examples: list[Example], micro: int, pad_id: int, image_processor,
                  pack_len: int | None = None, count: int | None = None) -> list[MicroBatch]:
    """One worker's share of a step as micro-batches.

    Padded: `micro` examples per micro-batch, similar lengths grouped (less padding). Packed
    (`pack_len` = max_seq_len): at most `micro` rows of up to `pack_len` positions per
    micro-batch, so a forward never holds more than micro x max_seq_len positions, the padded
    layout's worst case. `count` (packed) spreads the rows over exactly that many micro-batches:
    workers pack to different row counts, and FSDP needs every worker to run the same number of
    forwards (see `packed_micro_count`). The step loss uses global normalisers, so neither
    grouping changes it (model/losses.py).
    """
    if pack_len is None:
        ordered = sorted(examples, key=lambda ex: (ex.length, ex.task))
        return [collate(ordered[i : i + micro], pad_id, image_processor) for i in range(0, len(ordered), micro)]
    rows = pack(examples, pack_len)
    count = count or -(-len(rows) // micro)
    if count * micro < len(rows) or count > len(examples):
        raise ValueError(f"{len(examples)} examples in {len(rows)} packed rows cannot make {count} micro-batches of <= {micro} rows")
    while len(rows) < count:  # fewer rows than forwards: split the fullest row in two
        big = max(range(len(rows)), key=lambda i: len(rows[i]))
        row = rows.pop(big)
        rows[big:big] = [row[: len(row) // 2], row[len(row) // 2 :]]
    sizes = [len(rows) // count + (k < len(rows) % count) for k in range(count)]
    starts = [sum(sizes[:k]) for k in range(count)]
    return [collate_packed(rows[a : a + n], pad_id, image_processor) for a, n in zip(starts, sizes)]


def packed_micro_count(per_worker: list[list[int]], micro: int, pack_len: int) -> int:
    """Micro-batches each worker runs in a packed step (from every worker's example lengths):
    enough for the worker with the most rows. Every worker computes the same number."""
    return max(-(-len(pack_lengths(lengths, pack_len)) // micro) for lengths in per_worker)


def fill_image_ids(examples: list[Example], image_processor, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Generation rows without pre-computed ids: VQ-encode their images now (slow path)."""
    todo = [ex for ex in examples if ex.task == "generation" and not ex.image_ids]
    if todo:
        ids = encode(generation_pixels([ex.image for ex in todo], image_processor))
        for ex, row_ids in zip(todo, ids.tolist()):
            ex.image_ids, ex.image = row_ids, None
