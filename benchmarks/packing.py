"""Sequence packing (batch.packing): non-pad token share, and tokens/s packed vs padded.

1. Non-pad share (real positions / positions computed) of one worker's step, padded layout
   (rows sorted by length, `micro` per forward, the trainer's padded path) vs packed layout
   (best-fit decreasing to max_seq_len, `micro` packs per forward):
   - tiny: rows of the tiny build's kind and lengths (the tests' row helper at stage II's 2:3:5,
     tokenised by the tiny preset's tokenizer, 8x8 = 64 image ids), the tiny recipe's step
     (16 rows, micro 16, max_seq_len 256);
   - long-tailed: lengths of a Janus-Pro-1B stage II step per GPU (512 rows / 8 GPUs = 64 rows,
     micro 8, max_seq_len 4096) at 2:3:5: generation = 576 image ids + a log-normal prompt,
     understanding = 576 image positions + a log-normal conversation, text = log-normal with a
     long tail, clipped at 4096. Only lengths matter here, so no model runs.
2. Tokens/s on the tiny rows (per CPU-second of one thread unless --wall): our JanusLoss forward+backward on packed micro-batches vs the
   plain padded transformers forward+backward (the model's own forward with `labels` for
   understanding/text rows, the generation path by hand, as benchmarks/train_step.py's bare
   loop), same examples, alternated, best of `--repeats`. Tokens = real positions.

Ends with one JSON line; `ratio` = the packed non-pad share on the long-tailed distribution
(goal >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from model.data import Encoder, micro_batches, pack_lengths  # noqa: E402
from model.losses import JanusLoss, combine  # noqa: E402
from model.tiny import build_tiny_janus, load_janus  # noqa: E402
from pipeline.schema import TASKS  # noqa: E402

RATIO = {"understanding": 2, "text": 3, "generation": 5}
WALL = False


def padded_share(lengths: list[int], micro: int) -> float:
    ordered = sorted(lengths)
    computed = sum(len(ordered[i : i + micro]) * max(ordered[i : i + micro]) for i in range(0, len(ordered), micro))
    return sum(lengths) / computed


def packed_share(lengths: list[int], micro: int, pack_len: int) -> float:
    """As model.data.micro_batches lays it out: each micro-batch is as wide as its fullest pack."""
    rows = [sum(lengths[i] for i in row) for row in pack_lengths(lengths, pack_len)]
    computed = sum(len(rows[i : i + micro]) * max(rows[i : i + micro]) for i in range(0, len(rows), micro))
    return sum(lengths) / computed


def long_tailed_steps(steps: int, rows: int, max_len: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    tasks = [t for t, k in RATIO.items() for _ in range(k)]
    out = []
    for _ in range(steps):
        lengths = []
        for i in range(rows):
            task = tasks[i % len(tasks)]
            if task == "generation":
                n = 576 + 4 + rng.lognormal(np.log(40), 0.6)
            elif task == "understanding":
                n = 576 + 4 + rng.lognormal(np.log(120), 1.0)
            else:
                n = rng.lognormal(np.log(300), 1.2)
            lengths.append(int(min(max(n, 8), max_len)))
        out.append(lengths)
    return out


def tiny_examples(processor, steps: int, rows: int):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "model"))
    from conftest import sample_rows

    enc = Encoder(processor, 256, 0.1, seed=0, num_image_tokens=processor.num_image_tokens)
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 256, processor.num_image_tokens).tolist() for _ in range(8)]
    table = sample_rows(steps * rows, RATIO, seed=7, image_tokens=ids, grid=8, with_image=False)
    examples = [enc.encode(r, i) for i, r in enumerate(table)]
    return enc, [examples[s * rows : (s + 1) * rows] for s in range(steps)]


def bare_padded_step(model, micro) -> None:
    """Plain transformers on padded rows: forward with labels (text), generation path by hand."""
    for mb in micro:
        text_rows = [i for i, t in enumerate(mb.tasks) if t != "generation"]
        gen_rows = [i for i, t in enumerate(mb.tasks) if t == "generation"]
        loss = 0.0
        if text_rows:
            idx = torch.tensor(text_rows)
            und = [i for i in text_rows if mb.tasks[i] == "understanding"]
            pixels = mb.pixel_values if und else None
            out = model(input_ids=mb.input_ids[idx], attention_mask=mb.attention_mask[idx], pixel_values=pixels,
                        labels=mb.labels[idx])
            loss = loss + out.loss
        if gen_rows:
            idx = torch.tensor(gen_rows)
            ids, gen_in, targets = mb.input_ids[idx], mb.gen_inputs[idx], mb.gen_targets[idx]
            embeds = model.get_input_embeddings()(ids)
            slots = gen_in >= 0
            embeds[slots] = model.prepare_embeddings_for_image_generation(gen_in[slots])
            hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mb.attention_mask[idx]).last_hidden_state
            loss = loss + F.cross_entropy(model.model.generation_head(hidden).flatten(0, 1), targets.flatten(), ignore_index=-100)
        loss.backward()


def ours_step(model, micro, weights, counts) -> None:
    for mb in micro:
        combine(JanusLoss(model)(mb), weights, counts).backward()


def timed(fn, batches, warmup: int) -> float:
    """CPU seconds of this process (torch runs one thread here, OMP_NUM_THREADS=1): on a shared,
    loaded machine wall time mostly measures the other processes; the CPU time this work takes
    does not. Use --wall on a dedicated machine."""
    clock = time.perf_counter if WALL else time.process_time
    for b in batches[:warmup]:
        fn(b)
    start = clock()
    for b in batches[warmup:]:
        fn(b)
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="fewer steps (CI)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wall", action="store_true", help="time wall clock, all threads (dedicated machine)")
    args = parser.parse_args()
    global WALL
    WALL = args.wall
    if not WALL:
        torch.set_num_threads(1)
    steps, warmup = (6, 2) if args.small else (20, 4)
    torch.manual_seed(0)

    long_steps = long_tailed_steps(50, rows=64, max_len=4096)
    long_padded = float(np.mean([padded_share(s, 8) for s in long_steps]))
    long_packed = float(np.mean([packed_share(s, 8, 4096) for s in long_steps]))

    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load_janus(build_tiny_janus(Path(tmp) / "base", "tiny-random"), dtype=torch.float32)
    model.train()
    enc, steps_examples = tiny_examples(processor, steps, rows=16)
    tiny_lengths = [[ex.length for ex in s] for s in steps_examples]
    tiny_padded = float(np.mean([padded_share(s, 16) for s in tiny_lengths]))
    tiny_packed = float(np.mean([packed_share(s, 16, 256) for s in tiny_lengths]))

    ip = processor.image_processor
    padded = [micro_batches(s, 16, enc.pad, ip) for s in steps_examples]
    packed = [micro_batches(s, 16, enc.pad, ip, pack_len=256) for s in steps_examples]
    tokens = sum(sum(ex.length for ex in s) for s in steps_examples[warmup:])
    norms = []
    for s in steps_examples:
        rows = {t: sum(ex.task == t for ex in s) for t in TASKS}
        norms.append(({t: n / len(s) for t, n in rows.items() if n}, {t: sum(ex.targets for ex in s if ex.task == t) for t in TASKS}))
    ours_packed, ours_padded, bare = [], [], []
    for _ in range(args.repeats):  # alternate: the machine is shared
        model.zero_grad(set_to_none=True)
        ours_packed.append(timed(lambda k: ours_step(model, packed[k], *norms[k]), list(range(steps)), warmup))
        model.zero_grad(set_to_none=True)
        ours_padded.append(timed(lambda k: ours_step(model, padded[k], *norms[k]), list(range(steps)), warmup))
        model.zero_grad(set_to_none=True)
        bare.append(timed(lambda k: bare_padded_step(model, padded[k]), list(range(steps)), warmup))
    tps = {name: tokens / min(t) for name, t in (("packed", ours_packed), ("padded", ours_padded), ("bare", bare))}

    print(f"non-pad share, tiny rows (16-row step, max_seq_len 256): padded {tiny_padded:.3f}, packed {tiny_packed:.3f}")
    print(f"non-pad share, long-tailed (64 rows/GPU, micro 8, max_seq_len 4096): padded {long_padded:.3f}, "
          f"packed {long_packed:.3f} (goal >= 0.95)")
    print(f"tiny tokens/s (forward+backward, real positions): ours packed {tps['packed']:.0f}, ours padded "
          f"{tps['padded']:.0f}, plain padded transformers {tps['bare']:.0f}; packed/plain padded "
          f"{tps['packed'] / tps['bare']:.2f}x ({'wall clock' if WALL else 'per CPU-second, one thread'})")
    print(json.dumps({"benchmark": "packing", "ours": round(long_packed, 4), "baseline": round(long_padded, 4),
                      "unit": "non-pad share", "ratio": round(long_packed, 4),
                      "tiny_share": {"packed": round(tiny_packed, 4), "padded": round(tiny_padded, 4)},
                      "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
                      "speedup_vs_plain_padded": round(tps["packed"] / tps["bare"], 3)}))


if __name__ == "__main__":
    main()
