"""`janus-forge eval MODEL_DIR --data BUILD_DIR --out DIR`: what a Janus checkpoint can do.

Three measurements on the build's held-out rows (model/eval_sets.py), for any Janus checkpoint
loaded the one way (`from_pretrained` of a local dir):
- generation, GenEval-style: held-out prompts by category, sampled with CFG at each guidance,
  decoded and checked by the deterministic checker (model/eval_checks.py). Beside each accuracy,
  `chance`: the pass rate of a perfect renderer that ignores the prompt's content (a random
  scene of the same category), so "above chance" means the prompt was followed.
- understanding: greedy answers, relaxed accuracy (ChartQA's rule), the small world's QA and
  the charts' computed QA apart, each beside its majority-answer baseline and chance.
- text: held-out perplexity.
DIR/eval.json holds the summary and one record per sample; generated images are in DIR/images/.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from model.eval_checks import check, detect, relaxed_match
from model.eval_sets import HeldOut, load_heldout
from model.generate import generate_images
from model.tiny import load_janus
from stages.image_checks import decode
from stages.shapes_world import CATEGORIES, render, sample_scene

log = logging.getLogger("janus_forge.eval")
ATTRIBUTES = ("colour", "shape", "count", "position")


@dataclass(frozen=True)
class EvalOptions:
    guidance: tuple[float, ...] = (5.0, 1.0)  # the first is the one reported as "the" accuracy
    per_category: int = 40  # held-out prompts per generation category (0: all)
    max_questions: int = 200  # per understanding set (0: all)
    max_texts: int = 200
    batch_size: int = 32
    max_new_tokens: int = 12
    seed: int = 0
    device: str = "cpu"


def run_eval(model_dir: Path, build_dir: Path, out_dir: Path, options: EvalOptions = EvalOptions()) -> dict:
    """Evaluate one checkpoint on a build's held-out sets; writes DIR/eval.json, returns its summary."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    sets = load_heldout(build_dir)
    log.info("held-out sets in %s: %s", build_dir, sets.sizes())
    device = torch.device(options.device)
    model, processor = load_janus(model_dir)
    model.to(device)
    records: list[dict] = []
    summary: dict = {"model": str(model_dir), "build": str(build_dir), "sizes": sets.sizes()}
    if sets.generation:
        summary["generation"] = {}
        for scale in options.guidance:
            recs = eval_generation(model, processor, _per_category(sets, options), out_dir, scale, options)
            summary["generation"][_g(scale)] = summarise_generation(recs, options.seed)
            records += recs
    summary["understanding"] = {}
    for name in ("shapes_qa", "chart_qa"):
        rows = _limit(getattr(sets, name), options.max_questions, options.seed)
        if rows:
            recs = eval_understanding(model, processor, rows, name, options)
            summary["understanding"][name] = summarise_answers(recs)
            records += recs
    if sets.text:
        summary["text"] = eval_text(model, processor, _limit(sets.text, options.max_texts, options.seed), options)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps({"summary": summary, "records": records}, indent=1, ensure_ascii=False))
    return summary


def _g(scale: float) -> str:
    return f"cfg{scale:g}"


def _limit(rows: list[dict], n: int, seed: int) -> list[dict]:
    rows = sorted(rows, key=lambda r: r["sample_id"])
    return random.Random(seed).sample(rows, n) if n and len(rows) > n else rows


def _per_category(sets: HeldOut, options: EvalOptions) -> list[dict]:
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for row in sets.generation:
        by_cat[row["spec"]["category"]].append(row)
    return [r for cat in CATEGORIES for r in _limit(by_cat.get(cat, []), options.per_category, options.seed)]


# -- generation ---------------------------------------------------------------------------------
@torch.no_grad()
def eval_generation(model, processor, rows: list[dict], out_dir: Path, scale: float, options: EvalOptions) -> list[dict]:
    model.eval()
    folder = out_dir / "images" / _g(scale)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    batches = range(0, len(rows), options.batch_size)
    for b in tqdm(batches, desc=f"eval generation {_g(scale)}", unit="batch"):
        chunk = rows[b: b + options.batch_size]
        images = generate_images(model, processor, [r["prompt"] for r in chunk], seed=options.seed + b, guidance_scale=scale)
        for i, (row, image) in enumerate(zip(chunk, images)):
            name = f"{b + i:05d}.png"
            image.save(folder / name)
            found = detect(image)
            records.append({"kind": "generation", "guidance": scale, "category": row["spec"]["category"], "sample_id": row["sample_id"],
                            "prompt": row["prompt"], "expected": row["spec"], "got": found, **check(row["spec"], found),
                            "image": f"images/{_g(scale)}/{name}"})
    return records


def summarise_generation(records: list[dict], seed: int) -> dict:
    """Per-category and overall (mean of categories, GenEval's rule) accuracy, attribute accuracy, chance.

    Attributes are judged over every category and again per category: a class-conditional model
    (stage I) is judged on the families it trained on (`categories.colour.attributes.colour`).
    """
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_cat[r["category"]].append(r)
    chance = prompt_blind_chance(records, seed)
    cats = {c: {"accuracy": _mean(r["passed"] for r in rs), "n": len(rs), "chance": chance["categories"][c]["passed"],
                "attributes": _attributes(rs, chance["categories"][c])} for c, rs in by_cat.items()}
    return {"overall": _mean(c["accuracy"] for c in cats.values()), "chance": _mean(c["chance"] for c in cats.values()),
            "categories": cats, "attributes": _attributes(records, chance["attributes"])}


def _attributes(records: list[dict], chance: dict) -> dict:
    out = {}
    for a in ATTRIBUTES:
        judged = [r[a] for r in records if r[a] is not None]
        if judged:
            out[a] = {"accuracy": _mean(judged), "n": len(judged), "chance": chance[a]}
    return out


def prompt_blind_chance(records: list[dict], seed: int) -> dict:
    """Pass rates of a perfect renderer that ignores the prompt's words: for each record, a random
    scene of the same category, checked against the record's prompt."""
    rng = random.Random(seed)
    cats: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    attrs: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        for _ in range(4):
            verdict = check(r["expected"], detect(render(sample_scene(rng, r["category"]), 32)))
            cats[r["category"]]["passed"].append(verdict["passed"])
            for a in ATTRIBUTES:
                if verdict[a] is not None:
                    attrs[a].append(verdict[a])
                    cats[r["category"]][a].append(verdict[a])
    return {"categories": {c: {k: _mean(v) for k, v in d.items()} for c, d in cats.items()},
            "attributes": {a: _mean(v) for a, v in attrs.items()}}


def _mean(values) -> float:
    values = [float(v) for v in values]
    return round(sum(values) / len(values), 4) if values else 0.0


# -- understanding --------------------------------------------------------------------------------
@torch.no_grad()
def eval_understanding(model, processor, rows: list[dict], name: str, options: EvalOptions) -> list[dict]:
    model.eval()
    records = []
    tok = processor.tokenizer
    for b in tqdm(range(0, len(rows), options.batch_size), desc=f"eval {name}", unit="batch"):
        chunk = rows[b: b + options.batch_size]
        texts = [f"<|User|>: <image_placeholder>\n{r['question']}\n\n<|Assistant|>:" for r in chunk]
        images = [decode(r["image"]) for r in chunk]  # the one decoder: EXIF, 16-bit, alpha as in training
        inputs = processor(text=texts, images=images, padding=True, return_tensors="pt").to(model.device)
        out = model.generate(**inputs, max_new_tokens=options.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        replies = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for row, reply in zip(chunk, replies):
            got = reply.strip().split("\n")[0].strip()
            records.append({"kind": name, "sample_id": row["sample_id"], "question": row["question"], "type": row["type"],
                            "expected": row["answer"], "got": got, "passed": relaxed_match(got, row["answer"])})
    return records


def summarise_answers(records: list[dict]) -> dict:
    """Accuracy beside the majority-answer baseline (always say the most common answer) and chance
    (1 / the number of distinct answers to questions of the same type)."""
    answers = Counter(r["expected"].strip().lower() for r in records)
    per_type: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        per_type[r["type"]].append(r)
    options = {t: len({r["expected"].strip().lower() for r in rs}) for t, rs in per_type.items()}
    return {
        "accuracy": _mean(r["passed"] for r in records), "n": len(records),
        "majority": round(answers.most_common(1)[0][1] / len(records), 4), "majority_answer": answers.most_common(1)[0][0],
        "chance": _mean(1 / options[r["type"]] for r in records),
        "by_type": {t: {"accuracy": _mean(r["passed"] for r in rs), "n": len(rs)} for t, rs in sorted(per_type.items())},
    }


# -- text ------------------------------------------------------------------------------------------
@torch.no_grad()
def eval_text(model, processor, rows: list[dict], options: EvalOptions) -> dict:
    """Token-level perplexity of held-out text (BOS + text + EOS, as the trainer encodes it)."""
    tok = processor.tokenizer
    total, count = 0.0, 0
    for b in range(0, len(rows), options.batch_size):
        ids = [[tok.bos_token_id] + tok(r["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
               for r in rows[b: b + options.batch_size]]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), tok.pad_token_id)
        mask = torch.zeros_like(input_ids)
        for i, seq in enumerate(ids):
            input_ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
        input_ids, mask = input_ids.to(model.device), mask.to(model.device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        targets = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    return {"perplexity": round(math.exp(total / count), 3), "tokens": count, "n": len(rows), "vocab": len(tok)}
