"""End-of-stage samples beside the checkpoint: a CFG image grid for fixed prompts, answers to held-out questions."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from model.config import TrainRecipe
from model.data import decode_image
from model.generate import generate_images
from model.shards import ShardSet


def image_grid(images: list[Image.Image], captions: list[str], cols: int, cell: int = 128) -> Image.Image:
    """One row per prompt (caption on the left edge of the row), `cols` samples per row."""
    rows = (len(images) + cols - 1) // cols
    label = 160
    grid = Image.new("RGB", (label + cols * cell, rows * cell), "white")
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(img.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (label + c * cell, r * cell))
    for r, text in enumerate(captions):
        draw.text((4, r * cell + 4), text[:24], fill="black")
    return grid


@torch.no_grad()
def answer(model, processor, row: dict, max_new_tokens: int, device: torch.device) -> dict:
    """Greedy answer to the first user turn of an understanding row, in the training prompt format."""
    turns = row["conversation"]
    question = next(t["content"] for t in turns if t["role"] == "user")
    reference = next((t["content"] for t in turns if t["role"] == "assistant"), None)
    text = f"<|User|>: {question.strip()}\n\n<|Assistant|>:"
    inputs = processor(text=[text], images=[decode_image(row)], return_tensors="pt").to(device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    reply = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return {"sample_id": row["sample_id"], "question": question, "reference": reference, "answer": reply.strip()}


def write_samples(model, processor, recipe: TrainRecipe, shards: ShardSet, out_dir: Path, device: torch.device) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    cfg = recipe.samples
    if cfg.prompts:
        images = generate_images(model, processor, cfg.prompts, seed=recipe.seed, guidance_scale=cfg.guidance,
                                 n_per_prompt=cfg.images_per_prompt)
        image_grid(images, cfg.prompts, cfg.images_per_prompt).save(out_dir / "grid.png")
        (out_dir / "prompts.json").write_text(json.dumps({"prompts": cfg.prompts, "guidance": cfg.guidance,
                                                          "seed": recipe.seed}, indent=2))
    if cfg.questions:
        # Rows past what training read are held out; a short run that read every row says so.
        rows, held_out = shards.tail("understanding", cfg.questions, skip_rows=recipe.schedule.steps * recipe.batch.size)
        answers = [{**answer(model, processor, r, cfg.max_new_tokens, device), "held_out": held_out} for r in rows]
        (out_dir / "answers.json").write_text(json.dumps(answers, indent=2, ensure_ascii=False))
    return out_dir
