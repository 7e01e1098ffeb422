"""Background prefetch of training steps: shard rows -> this worker's collated micro-batches."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from model.data import Encoder, MicroBatch, fill_image_ids, micro_batches, packed_micro_count
from model.shards import ShardSet, rank_rows


@dataclass
class StepData:
    step: int
    first_row: int  # global index of the step's first row (epochs included): the data position
    rows: dict[str, int]  # rows per task in the global batch
    targets: dict[str, int]  # target tokens per task in the global batch (loss normalisers)
    tokens: int  # sequence positions in the global batch (throughput)
    micro: list[MicroBatch]  # this worker's share
    lengths: list[int] = field(default_factory=list)  # positions per example, global batch (model FLOPs)


class Loader:
    """Iterates StepData from `start_step`; a daemon thread keeps `prefetch` steps ready."""

    def __init__(self, shards: ShardSet, encoder: Encoder, image_processor, encode_ids: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int, micro: int, rank: int, world: int, start_step: int, prefetch: int = 2,
                 pack_len: int | None = None):
        self.shards, self.encoder, self.image_processor, self.encode_ids = shards, encoder, image_processor, encode_ids
        self.batch_size, self.micro, self.rank, self.world = batch_size, micro, rank, world
        self.start_step = start_step
        self.pack_len = pack_len  # packed layout to this many positions per row; None = padded
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="janus-loader", daemon=True)
        self._thread.start()

    def prepare(self, step: int, first: int, rows: list[dict]) -> StepData:
        per_rank = self.batch_size // self.world
        mine = rank_rows(self.batch_size, self.rank, self.world)
        # Every worker tokenises the whole global batch (cheap) to know the loss normalisers,
        # but reads payload (images, VQ ids) and decodes images only for its own rows (ShardSet.batches).
        examples = [self.encoder.encode(row, first + i, with_image=i in mine) for i, row in enumerate(rows)]
        own = examples[mine.start : mine.stop]
        fill_image_ids(own, self.image_processor, self.encode_ids)
        targets: Counter = Counter()
        for ex in examples:
            targets[ex.task] += ex.targets if (ex.task != "generation" or ex.image_ids) else self.encoder.num_image_tokens
        # Other workers' generation rows carry no VQ ids here (text only): count them at full length.
        lengths = [ex.length if ex.task != "generation" or ex.image_ids else len(ex.input_ids) + self.encoder.num_image_tokens - 1
                   for ex in examples]
        # The step loss does not depend on how rows are split into micro-batches (global
        # normalisers), so rows are grouped (padded) or packed for the least padding.
        count = None
        if self.pack_len is not None:  # every worker packs every worker's share: same forward count on all
            count = packed_micro_count([lengths[r * per_rank : (r + 1) * per_rank] for r in range(self.world)],
                                       self.micro, self.pack_len)
        micro = micro_batches(own, self.micro, self.encoder.pad, self.image_processor, self.pack_len, count)
        return StepData(step, first, dict(Counter(ex.task for ex in examples)), dict(targets),
                        sum(lengths), micro, lengths)

    def _fill(self) -> None:
        try:
            batches = self.shards.batches(self.batch_size, self.start_step, self.rank, self.world)
            for step, (first, rows) in enumerate(batches, start=self.start_step):
                item = self.prepare(step, first, rows)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except Exception as err:  # handed to the training thread, which raises it
            self._queue.put(err)

    def __iter__(self) -> Iterator[StepData]:
        while True:
            item = self._queue.get()
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
