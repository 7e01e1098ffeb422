"""Deterministic generator of the tiny Midjourney-style prompt file the tiny recipe reads.

Regenerate (the output is committed and must not change unless this file does):
    python recipes/data/tiny/make_prompts.py            # writes midjourney_prompts.jsonl here
    python recipes/data/tiny/make_prompts.py --n 100000 --out /tmp/p.jsonl   # bigger, for benchmarks

The subjects are captions of the shapes world (stages/shapes_world.py), so the tiny build's
synthetic images can be rendered by a teacher that knows that world (the stage-I checkpoint) and
checked against their prompts; `--world scenes` gives the older free-form subjects. The file
mixes what real Discord prompts contain: parameters (--ar, --v, --no ...), leading
image URLs, "/imagine prompt:", "::" weights, exact copies, small-edit near-copies, prompts
too short to use, two blocklisted terms ("nsfw", "gore"), one over-long prompt and two
unreadable lines (bad JSON, a number as prompt), so every verdict of the prompt stages shows up.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo, for stages.shapes_world
from stages.shapes_world import caption, sample_scene  # noqa: E402

SUBJECTS = [
    "a lone astronaut standing on a red desert planet", "an old fisherman mending nets by the harbor",
    "a majestic white tiger resting in tall grass", "a futuristic city skyline with flying cars",
    "a cozy library filled with ancient books", "a samurai warrior under cherry blossom trees",
    "a tiny robot watering a flower in a greenhouse", "a victorian mansion on a foggy hill",
    "a steampunk airship above the clouds", "a fox wearing a knitted scarf in the snow",
    "a bustling night market in old Hong Kong", "a crystal cave glowing with blue light",
    "a portrait of an elderly woman with silver hair", "a medieval knight kneeling in a chapel",
    "a koi pond in a japanese zen garden", "a lighthouse battered by a winter storm",
    "a cyberpunk street vendor selling noodles", "a dragon sleeping on a pile of gold",
    "a vintage red car parked on a desert highway", "a ballerina dancing in an abandoned theater",
    "a floating island with waterfalls", "a cup of coffee on a rainy windowsill",
    "an owl perched on a mossy branch at dusk", "a child flying a kite on a windy beach",
    "a cathedral made entirely of glass", "a wolf howling at a giant full moon",
    "a mountain village covered in fresh snow", "a jazz musician playing saxophone in a smoky bar",
    "a sunflower field under a stormy sky", "an underwater city with bioluminescent coral",
    "a hot air balloon festival at sunrise", "a witch brewing potions in a forest cabin",
    "a giant tortoise carrying a small town", "a racing motorcycle drifting on a wet track",
    "a bowl of ramen with steam rising", "a greek statue covered in ivy",
    "a train crossing a stone viaduct in autumn", "a desert oasis with palm trees and camels",
    "a neon-lit arcade full of retro machines", "a polar bear cub on an ice floe",
]
STYLES = [
    "digital painting", "oil painting by rembrandt", "studio ghibli style", "hyperrealistic photograph",
    "watercolor illustration", "art nouveau poster", "ukiyo-e woodblock print", "low poly 3d render",
    "unreal engine 5 render", "pencil sketch", "synthwave aesthetic", "baroque masterpiece",
    "pixar style 3d animation", "cinematic concept art", "charcoal drawing", "isometric diorama",
    "impressionist painting by monet", "dark fantasy illustration", "vaporwave collage", "film noir still",
]
LIGHTING = [
    "golden hour lighting", "dramatic rim light", "soft diffused light", "volumetric god rays",
    "neon glow", "moody low key lighting", "bright midday sun", "candlelight", "blue hour twilight",
    "studio softbox lighting", "backlit silhouette", "overcast natural light",
]
CAMERA = [
    "shot on canon eos r5, 85mm lens", "wide angle shot", "macro photography", "aerial drone view",
    "shallow depth of field", "35mm film grain", "telephoto lens, bokeh", "symmetrical composition",
    "low angle shot", "fisheye lens", "tilt shift photography", "long exposure",
]
DETAILS = [
    "highly detailed", "intricate textures", "8k resolution", "trending on artstation", "sharp focus",
    "vibrant colors", "muted pastel palette", "award winning", "epic scale", "whimsical mood",
    "melancholic atmosphere", "ultra realistic", "rich color grading", "delicate brushstrokes", "octane render",
]
NEGATIVES = ["text, watermark", "blurry, low quality", "people", "frame, border", "extra fingers"]
URLS = ["https://s.mj.run/{}", "https://cdn.discordapp.com/attachments/{}/image.png", "<https://i.imgur.com/{}.jpg>"]
SHORT = ["cat", "a dog", "sunset", "blue sky --v 5", "robot --ar 1:1", "hello there", "nice", "dragon --niji 5",
         "portrait", "forest --q 2"]
EMPTY_AFTER_CLEANING = ["--ar 16:9 --v 5.2", "https://s.mj.run/abcdef", "   "]


def subject(rng: random.Random, world: str) -> str:
    return caption(sample_scene(rng)) if world == "shapes" else rng.choice(SUBJECTS)


def base_prompt(rng: random.Random, world: str = "shapes") -> str:
    details = rng.sample(DETAILS, 2)
    return ", ".join([subject(rng, world), rng.choice(STYLES), rng.choice(LIGHTING), rng.choice(CAMERA), *details])


def parameters(rng: random.Random) -> str:
    """A Midjourney parameter tail in the spellings people type."""
    parts = []
    if rng.random() < 0.7:
        parts.append(rng.choice(["--ar", "--aspect", "—ar"]) + " " + rng.choice(["16:9", "2:3", "1:1", "3:2", "9:16", "4:5"]))
    if rng.random() < 0.6:
        parts.append(rng.choice(["--v 5.2", "--v 6", "--version 5", "--niji 5", "--v 4"]))
    if rng.random() < 0.3:
        parts.append(rng.choice(["--q 2", "--quality .5", "--s 750", "--stylize 1000", "--chaos 30", "--c 10"]))
    if rng.random() < 0.2:
        parts.append(f"--seed {rng.randrange(10**9)}")
    if rng.random() < 0.15:
        parts.append(rng.choice(["--style raw", "--tile", "--iw 0.5", "--weird 250"]))
    if rng.random() < 0.2:
        parts.append("--no " + rng.choice(NEGATIVES))
    rng.shuffle(parts)
    return " ".join(parts)


def decorate(prompt: str, rng: random.Random) -> str:
    """Wrap a clean prompt in the syntax people add around it; cleaning must undo all of it."""
    if rng.random() < 0.08:  # "::" multi-prompt weights
        head, _, tail = prompt.partition(", ")
        prompt = f"{head}::{rng.choice(['2', '1.5', ''])} {tail}::{rng.choice(['1', '-0.5', '0.8'])}"
    if rng.random() < 0.08:
        urls = [rng.choice(URLS).format(rng.randrange(10**6)) for _ in range(rng.choice([1, 1, 2]))]
        prompt = " ".join(urls) + " " + prompt
    if rng.random() < 0.1:
        prompt = "/imagine prompt: " + prompt
    tail = parameters(rng) if rng.random() < 0.75 else ""
    return f"{prompt} {tail}".strip()


def near_copy(prompt: str, rng: random.Random) -> str:
    """A small edit that keeps 3-word-shingle Jaccard well above 0.8."""
    edit = rng.choice(["append", "drop", "last_word"])
    if edit == "append":
        return prompt + ", " + rng.choice(["masterpiece", "best quality", "4k", "dreamy"])
    if edit == "drop":
        return prompt.rsplit(", ", 1)[0]
    return prompt.rsplit(" ", 1)[0] + " " + rng.choice(["details", "shading", "glow", "palette"])


def generate(n_base: int = 400, seed: int = 0, world: str = "shapes") -> list[str]:
    """JSONL lines: n_base unique prompts plus ~16% copies, near-copies and bad rows."""
    rng = random.Random(seed)
    unique: dict[str, None] = {}
    while len(unique) < n_base:
        unique[base_prompt(rng, world)] = None
    bases = list(unique)
    prompts = [decorate(p, rng) for p in bases]
    n_extra = max(1, n_base // 12)
    # exact copies after cleaning: other parameters, other case, other punctuation
    prompts += [decorate(rng.choice(bases).title().replace(", ", " , "), rng) for _ in range(n_extra)]
    prompts += [decorate(near_copy(rng.choice(bases), rng), rng) for _ in range(n_extra)]
    prompts += SHORT + EMPTY_AFTER_CLEANING
    prompts += [
        "an nsfw painting of a beach party, oil painting, golden hour lighting --ar 3:2",
        "a battlefield full of Gore and smoke, dark fantasy illustration, epic scale --v 5",
        "café terrace at night in Ｐａｒｉｓ, impressionist painting by monet, warm light\u200b --ar 4:5",
        "a very long prompt, " + ", ".join(f"{rng.choice(DETAILS)} {rng.choice(SUBJECTS)}" for _ in range(40)),
    ]
    rng.shuffle(prompts)
    lines = [json.dumps({"prompt": p}, ensure_ascii=False) for p in prompts]
    # unreadable records: the source turns them into failed rows, it never drops them
    lines.insert(len(lines) // 3, '{"prompt": "a truncated line, digital painting')
    lines.insert(2 * len(lines) // 3, '{"prompt": 42}')
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="unique base prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world", choices=["shapes", "scenes"], default="shapes", help="what the prompts describe")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("midjourney_prompts.jsonl"))
    args = parser.parse_args()
    lines = generate(args.n, args.seed, args.world)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {args.out}")


if __name__ == "__main__":
    main()
