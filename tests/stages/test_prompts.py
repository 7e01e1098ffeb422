"""Midjourney prompt path: the source, clean_prompts and dedup_prompts, called directly (no Ray)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import collections
import csv
import importlib.util
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.recipe import load_recipe
from pipeline.schema import make_rows, sample_id
from stages.base import SOURCES, STAGES, StageContext, StageError, kept
from stages.prompt_clean import CleanPrompts, clean_prompt
from stages.prompt_dedup import DedupPrompts
from stages.prompt_source import ROWS_PER_TABLE, MidjourneyPrompts

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "data" / "tiny"


def ctx(recipe_dir: Path = Path(".")) -> StageContext:
    return StageContext(build_id="test", seed=0, recipe_dir=recipe_dir, source="mj", task="generation")


def source(recipe_dir: Path, paths: list[str], **kw) -> MidjourneyPrompts:
    cfg = MidjourneyPrompts.Config.model_validate({"kind": "midjourney_prompts", "paths": paths, **kw}, context={"recipe_dir": recipe_dir})
    return MidjourneyPrompts(cfg, ctx(recipe_dir))


def read_all(src: MidjourneyPrompts) -> pa.Table:
    src.preflight()
    return pa.concat_tables([t for path in src.files() for t in src.read(path)])


def prompt_rows(prompts: list) -> pa.Table:
    return make_rows([{"task": "generation", "source": "mj", "source_key": f"k{i}", "prompt": p} for i, p in enumerate(prompts)])


def clean(prompts: list, **kw) -> pa.Table:
    return CleanPrompts(CleanPrompts.Config(stage="clean_prompts", **kw), ctx()).run(prompt_rows(prompts))


def dedup(table: pa.Table, **kw) -> pa.Table:
    stage = DedupPrompts(DedupPrompts.Config(stage="dedup_prompts", **kw), ctx())
    stage.plan(kept(table).select(["sample_id", "prompt"]))
    return stage.run(table)


def verdicts(table: pa.Table) -> list[tuple]:
    return list(zip(table["status"].to_pylist(), table["reason"].to_pylist()))


# -- cleaning -------------------------------------------------------------------------------
STRIP_CASES = [
    ("a cyberpunk city at night, neon lights --ar 16:9 --v 5.2 --q 2 --s 750", "a cyberpunk city at night, neon lights",
     {"ar": "16:9", "v": "5.2", "q": "2", "s": "750"}),
    ("/imagine prompt: a red fox in the snow, watercolor --ar 2:3", "a red fox in the snow, watercolor", {"ar": "2:3"}),
    ("/IMAGINE prompt a red fox in the snow", "a red fox in the snow", {}),
    ("https://s.mj.run/Ab12Cd a portrait of a queen, oil painting --iw 0.5", "a portrait of a queen, oil painting", {"iw": "0.5"}),
    ("https://cdn.discordapp.com/attachments/1/2/a.png https://s.mj.run/x <https://i.imgur.com/y.jpg> a castle on a hill",
     "a castle on a hill", {}),
    ("/imagine prompt: https://s.mj.run/abc cute corgi astronaut --v 6", "cute corgi astronaut", {"v": "6"}),
    ("hot dog::2 on a plate::-0.5 --v 4", "hot dog, on a plate", {"v": "4"}),
    ("space:: ship sailing through nebula::1.5 --ar 3:2", "space, ship sailing through nebula", {"ar": "3:2"}),
    ("a cozy cabin in the woods --no text, watermark, people --ar 16:9", "a cozy cabin in the woods",
     {"no": "text, watermark, people", "ar": "16:9"}),
    ("a cozy cabin in the woods --no text, watermark", "a cozy cabin in the woods", {"no": "text, watermark"}),
    ("a dragon over mountains --stylize 1000 --chaos 40 --seed 123456 --weird 250", "a dragon over mountains",
     {"s": "1000", "c": "40", "seed": "123456", "w": "250"}),
    ("seamless floral wallpaper pattern --tile --v 5", "seamless floral wallpaper pattern", {"tile": True, "v": "5"}),
    ("anime girl under sakura trees --niji 5 --style expressive", "anime girl under sakura trees", {"niji": "5", "style": "expressive"}),
    ("portrait of an old sailor —ar 4:5 —v 5.1", "portrait of an old sailor", {"ar": "4:5", "v": "5.1"}),
    ("a cat in a hat --ar16:9 --v5", "a cat in a hat", {"ar": "16:9", "v": "5"}),
    ("a cat --aspect 1:1 --version 5 --quality .25", "a cat", {"ar": "1:1", "v": "5", "q": ".25"}),
    ("a knight --foo bar in shining armor", "a knight in shining armor", {"foo": "bar"}),
    ("a well--known painter at work --hd", "a well--known painter at work", {"hd": True}),
    ("the night —and the day, film noir", "the night —and the day, film noir", {}),
    ("a robot --sref https://a.com/1.png https://a.com/2.png --sw 50", "a robot", {"sref": "https://a.com/1.png https://a.com/2.png", "sw": "50"}),
    ("ｆｕｌｌｗｉｄｔｈ\u200b  letters,, here ,  now  --ar 1:1", "fullwidth letters, here, now", {"ar": "1:1"}),
    ("  lots\tof \n whitespace   here  ", "lots of whitespace here", {}),
    ("café terrace at night, impressionist", "café terrace at night, impressionist", {}),
    ("a fox, --ar 16:9", "a fox", {"ar": "16:9"}),
    ("--ar 16:9 --v 5", "", {"ar": "16:9", "v": "5"}),
]


@pytest.mark.parametrize("raw, text, params", STRIP_CASES)
def test_clean_prompt_strips_midjourney_syntax(raw, text, params):
    cleaned = clean_prompt(raw)
    assert cleaned.text == text
    assert cleaned.params == params


def test_leading_urls_are_recorded_and_inner_urls_stay():
    cleaned = clean_prompt("https://s.mj.run/a https://s.mj.run/b a logo like https://example.com/x")
    assert cleaned.image_urls == ["https://s.mj.run/a", "https://s.mj.run/b"]
    assert cleaned.text == "a logo like https://example.com/x"


def test_clean_filters_with_reasons_and_keeps_originals():
    big = "a giant mural of " + "very " * 10_000 + "many birds"  # ~50 KB: filtered, not a crash
    prompts = [
        "/imagine prompt: a lighthouse in a storm, oil painting --ar 16:9 --v 5",
        "--ar 16:9 --v 5.2",
        "",
        "cat --v 5",
        big,
        "a NSFW drawing of a beach",
        "the blood   bath of battle, dark art",
        "a gorgeous gorge at dawn, landscape photo",
    ]
    out = clean(prompts, blocklist=["nsfw", "blood bath", "gore"])
    assert verdicts(out) == [
        ("kept", None), ("filtered", "empty"), ("filtered", "empty"), ("filtered", "too_short"),
        ("filtered", "too_long"), ("filtered", "blocked"), ("filtered", "blocked"), ("kept", None),
    ]
    rows = out.to_pylist()
    assert rows[0]["prompt"] == "a lighthouse in a storm, oil painting"
    meta = json.loads(rows[0]["meta"])
    assert meta["raw_prompt"] == prompts[0] and meta["mj_params"] == {"ar": "16:9", "v": "5"}
    # filtered rows keep what was written, so a reviewer sees the real input
    assert [r["prompt"] for r in rows[1:7]] == prompts[1:7]
    assert rows[3]["detail"] == "word count 1 < min_words 3"
    assert rows[4]["detail"].startswith("500") and "max_chars 1000" in rows[4]["detail"]
    assert rows[5]["detail"] == "blocklisted term 'nsfw'"
    assert rows[6]["detail"] == "blocklisted term 'blood bath'"


def test_clean_thresholds_come_from_config_and_failed_rows_pass_through():
    table = prompt_rows(["one two", "one two three four five six", "ok ok ok"])
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(["kept", "kept", "failed"]))
    table = table.set_column(table.schema.get_field_index("reason"), "reason", pa.array([None, None, "bad_json"]))
    out = CleanPrompts(CleanPrompts.Config(stage="clean_prompts", min_words=2, max_chars=20), ctx()).run(table)
    assert verdicts(out) == [("kept", None), ("filtered", "too_long"), ("failed", "bad_json")]
    with pytest.raises(ValidationError, match="blocklist"):
        CleanPrompts.Config(stage="clean_prompts", blocklist=["ok", "  "])
    with pytest.raises(ValidationError, match="min_words"):
        CleanPrompts.Config(stage="clean_prompts", min_words=0)


# -- dedup -----------------------------------------------------------------------------------
BASE = [
    "a lone astronaut standing on a red desert planet, digital painting, golden hour lighting, wide angle shot, highly detailed",
    "a cozy library filled with ancient books, watercolor illustration, candlelight, shallow depth of field, whimsical mood",
    "a samurai warrior under cherry blossom trees, ukiyo-e woodblock print, soft diffused light, low angle shot, epic scale",
    "a tiny robot watering a flower in a greenhouse, pixar style 3d animation, bright midday sun, macro photography",
    "an old fisherman mending nets by the harbor, charcoal drawing, overcast natural light, 35mm film grain, melancholic atmosphere",
]


def test_dedup_exact_and_near_duplicates_name_the_kept_row():
    prompts = BASE + [
        BASE[0].upper().replace(",", " ;"),  # same after casefold + punctuation collapse
        BASE[1] + ", masterpiece",  # one phrase added
        BASE[2].rsplit(", ", 1)[0],  # last phrase dropped
        BASE[3].replace("macro photography", "macro photograph"),  # last word changed
        "a completely different prompt about a quiet harbor town at dawn in winter",
    ]
    out = dedup(clean(prompts))
    ids = out["sample_id"].to_pylist()
    got = {p: (s, r, d) for p, s, r, d in zip(prompts, out["status"].to_pylist(), out["reason"].to_pylist(), out["detail"].to_pylist())}
    for copy, original, reason in [(5, 0, "duplicate"), (6, 1, "near_duplicate"), (7, 2, "near_duplicate"), (8, 3, "near_duplicate")]:
        # the representative is whichever of the pair comes first in sample_id order
        first, second = sorted([copy, original], key=lambda i: ids[i])
        assert got[prompts[first]][0] == "kept"
        status, why, detail = got[prompts[second]]
        assert (status, why) == ("filtered", reason)
        assert detail.split()[0] == ids[first]
        if reason == "near_duplicate":
            assert float(detail.rsplit(" ", 1)[1].rstrip(")")) >= 0.8
    assert got[prompts[4]][0] == got[prompts[9]][0] == "kept"


def test_dedup_is_deterministic_under_shuffling():
    rng = random.Random(7)
    prompts = BASE * 3 + [p + ", " + w for p in BASE for w in ("4k", "dreamy")] + [f"unrelated prompt number {i} about {w}" for i, w in enumerate(["cats", "dogs", "ships"])]
    table = clean(prompts)
    reference = {r["sample_id"]: (r["status"], r["reason"], r["detail"]) for r in dedup(table).to_pylist()}
    assert collections.Counter(v[0] for v in reference.values())["kept"] == len(BASE) + 3
    for _ in range(3):
        order = list(range(table.num_rows))
        rng.shuffle(order)
        shuffled = dedup(table.take(order))
        assert {r["sample_id"]: (r["status"], r["reason"], r["detail"]) for r in shuffled.to_pylist()} == reference


def test_dedup_short_prompts_and_threshold():
    # two-word prompts have no 3-word shingle: single words are compared instead
    out = dedup(clean(["red fox", "Red fox!", "blue whale"], min_words=1))
    assert sorted(verdicts(out)) == [("filtered", "duplicate"), ("kept", None), ("kept", None)]
    a = "a small wooden boat on a calm lake at sunrise with mist over the water and pine trees"
    b = "a small wooden boat on a calm lake at sunset with birds over the water and pine trees"
    assert verdicts(dedup(clean([a, b]), threshold=0.9)) == [("kept", None), ("kept", None)]
    assert sorted(verdicts(dedup(clean([a, b]), threshold=0.3))) == [("filtered", "near_duplicate"), ("kept", None)]


def test_dedup_refuses_to_run_without_a_plan():
    stage = DedupPrompts(DedupPrompts.Config(stage="dedup_prompts"), ctx())
    with pytest.raises(StageError, match="plan"):
        stage.run(clean(BASE))
    stage.plan(kept(clean(BASE[:2])))
    with pytest.raises(StageError, match="not in the plan"):
        stage.run(clean(BASE))


# -- source -----------------------------------------------------------------------------------
PROMPTS = [f"prompt number {i}, oil painting --ar 16:9" for i in range(5)]


def write_all_formats(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    with open(tmp_path / "p.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt"])
        writer.writerows([[i, p] for i, p in enumerate(PROMPTS)])
    pq.write_table(pa.table({"prompt": PROMPTS, "id": list(range(5))}), tmp_path / "p.parquet")


@pytest.mark.parametrize("name", ["p.jsonl", "p.csv", "p.parquet"])
def test_source_reads_each_format(tmp_path, name):
    write_all_formats(tmp_path)
    table = read_all(source(tmp_path, [name]))
    assert table["prompt"].to_pylist() == PROMPTS
    assert set(table["status"].to_pylist()) == {"kept"} and set(table["task"].to_pylist()) == {"generation"}
    lines = [json.loads(m)["line"] for m in table["meta"].to_pylist()]
    assert lines == ([2, 3, 4, 5, 6] if name.endswith(".csv") else [1, 2, 3, 4, 5])  # csv line 1 is the header
    assert table["source_key"].to_pylist() == [f"{name}:{n}" for n in lines]
    assert table["sample_id"].to_pylist() == [sample_id("mj", f"{name}:{n}") for n in lines]
    keyed = read_all(source(tmp_path, [name], key_column="id"))
    assert keyed["source_key"].to_pylist() == [f"{name}:id={i}" for i in range(5)]


def test_source_streams_large_files_in_bounded_tables(tmp_path):
    n = 2 * ROWS_PER_TABLE + 17
    pq.write_table(pa.table({"prompt": [f"a photo of thing {i}" for i in range(n)]}), tmp_path / "big.parquet", row_group_size=1000)
    (tmp_path / "big.jsonl").write_text("".join(json.dumps({"prompt": f"thing {i}"}) + "\n" for i in range(n)))
    for name in ("big.parquet", "big.jsonl"):
        src = source(tmp_path, [name])
        sizes = [t.num_rows for t in src.read(tmp_path / name)]
        assert sum(sizes) == n and max(sizes) <= ROWS_PER_TABLE and len(sizes) == 3


def test_source_bad_jsonl_lines_become_failed_rows_and_counts_add_up(tmp_path):
    big = "an enormous prompt " + "word " * 10_000
    lines = [
        json.dumps({"prompt": "a good prompt about a lighthouse"}).encode(),
        b'{"prompt": "caf\xe9 au lait, bad latin-1 byte"}',
        b"",
        b"   ",
        b"{not json at all",
        b"[1, 2, 3]",
        json.dumps({"prompt": 12.5}).encode(),
        json.dumps({"prompt": None}).encode(),
        json.dumps({"other": "no prompt key here"}).encode(),
        json.dumps({"prompt": "lone surrogate \ud800 here"}).encode(),
        json.dumps({"prompt": ""}).encode(),
        json.dumps({"prompt": big}).encode(),
        json.dumps({"prompt": "another fine prompt, digital art --v 5"}).encode(),
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    table = read_all(source(tmp_path, ["bad.jsonl"]))
    assert table.num_rows == len(lines)  # every line accounted for
    assert verdicts(table) == [
        ("kept", None), ("failed", "invalid_utf8"), ("failed", "empty_line"), ("failed", "empty_line"),
        ("failed", "bad_json"), ("failed", "bad_json"), ("failed", "not_a_string"), ("failed", "missing_prompt"),
        ("failed", "missing_prompt"), ("failed", "invalid_utf8"), ("kept", None), ("kept", None), ("kept", None),
    ]
    details = table["detail"].to_pylist()
    assert details[1].startswith("bad.jsonl:2: invalid UTF-8 byte 0xe9")
    assert details[4].startswith("bad.jsonl:5: ") and "not json" in details[4]
    assert details[6] == "bad.jsonl:7: column 'prompt' holds float '12.5', not a string"
    # then cleaning: the empty and the 50 KB prompt are filtered; the failed rows stay failed
    out = CleanPrompts(CleanPrompts.Config(stage="clean_prompts"), ctx()).run(table)
    counts = collections.Counter(out["status"].to_pylist())
    assert counts == {"kept": 2, "filtered": 2, "failed": 9} and sum(counts.values()) == len(lines)
    assert verdicts(out)[10:12] == [("filtered", "empty"), ("filtered", "too_long")]


def test_source_csv_bad_bytes_and_short_rows(tmp_path):
    (tmp_path / "bad.csv").write_bytes(
        b'id,prompt\n1,"a quiet forest path, oil painting"\n2,"caf\xe9 terrace"\n\n3\n4,"a multi\nline prompt about boats"\n5,"the end"\n'
    )
    table = read_all(source(tmp_path, ["bad.csv"]))
    assert verdicts(table) == [("kept", None), ("failed", "invalid_utf8"), ("failed", "empty_line"), ("failed", "bad_csv"), ("kept", None), ("kept", None)]
    assert [json.loads(m)["line"] for m in table["meta"].to_pylist()] == [2, 3, 4, 5, 6, 8]
    assert table["prompt"].to_pylist()[4] == "a multi\nline prompt about boats"


def test_source_csv_huge_fields(tmp_path):
    # 200 KB is over the csv module's field limit: that record fails, the file goes on
    (tmp_path / "huge.csv").write_text('prompt\n"' + "x" * 200_000 + '"\n"' + "a bird " * 7_000 + '"\nsmall dog on a sofa\n')
    table = read_all(source(tmp_path, ["huge.csv"]))
    assert verdicts(table) == [("failed", "bad_csv"), ("kept", None), ("kept", None)]
    assert "field limit" in table["detail"][0].as_py()
    out = CleanPrompts(CleanPrompts.Config(stage="clean_prompts"), ctx()).run(table)
    assert verdicts(out) == [("failed", "bad_csv"), ("filtered", "too_long"), ("kept", None)]


def test_source_parquet_non_string_and_null_prompts(tmp_path):
    pq.write_table(pa.table({"prompt": [1, None, 3]}), tmp_path / "ints.parquet")
    pq.write_table(pa.table({"prompt": ["fine prompt here", None]}), tmp_path / "nulls.parquet")
    assert verdicts(read_all(source(tmp_path, ["ints.parquet"]))) == [("failed", "not_a_string"), ("failed", "missing_prompt"), ("failed", "not_a_string")]
    assert verdicts(read_all(source(tmp_path, ["nulls.parquet"]))) == [("kept", None), ("failed", "missing_prompt")]


@pytest.mark.parametrize("name", ["p.jsonl", "p.csv", "p.parquet"])
def test_wrong_column_is_a_clear_preflight_error(tmp_path, name):
    write_all_formats(tmp_path)
    with pytest.raises(StageError) as err:
        source(tmp_path, [name], column="caption").preflight()
    message = str(err.value)
    assert str(tmp_path / name) in message and "'caption'" in message and "['id', 'prompt']" in message
    with pytest.raises(StageError, match="'uid'"):
        source(tmp_path, [name], key_column="uid").preflight()


def test_duplicate_and_missing_keys_fail_their_rows(tmp_path):
    (tmp_path / "k.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "prompt": "first prompt here"}, {"id": "a", "prompt": "second prompt here"}, {"prompt": "no id at all"},
    ]) + "\n")
    table = read_all(source(tmp_path, ["k.jsonl"], key_column="id"))
    assert verdicts(table) == [("kept", None), ("failed", "duplicate_key"), ("failed", "missing_key")]
    assert len(set(table["sample_id"].to_pylist())) == 3


def test_json_array_file_is_a_clear_preflight_error(tmp_path):
    (tmp_path / "arr.json").write_text(json.dumps([{"prompt": "a cat on a mat"}], indent=2))
    with pytest.raises(StageError, match="JSON Lines"):
        source(tmp_path, ["arr.json"]).preflight()


def test_config_rejects_unknown_formats_and_missing_files(tmp_path):
    (tmp_path / "p.txt").write_text("a prompt\n")
    with pytest.raises(ValidationError, match="must end in one of"):
        source(tmp_path, ["p.txt"])
    with pytest.raises(ValidationError, match="no input file matches"):
        source(tmp_path, ["missing.jsonl"])


# -- the shipped tiny data and the recipe ------------------------------------------------------
def test_tiny_file_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_prompts", TINY / "make_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (TINY / "midjourney_prompts.jsonl").read_text(encoding="utf-8").splitlines() == module.generate()


def test_tiny_recipe_runs_the_prompt_path(tmp_path):
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "midjourney_prompts.jsonl").write_bytes((TINY / "midjourney_prompts.jsonl").read_bytes())
    (tmp_path / "r.yaml").write_text("""
name: prompts-only
sources:
  mj_prompts:
    kind: midjourney_prompts
    paths: [tiny/midjourney_prompts.jsonl]
    steps:
      - {stage: clean_prompts, min_words: 3, max_chars: 1000, blocklist: [nsfw, gore]}
      - {stage: dedup_prompts, threshold: 0.8}
mix:
  stages:
    stage3: {ratio: {generation: 1.0}, sources: {mj_prompts: 1.0}, batches: 1}
""")
    recipe = load_recipe(tmp_path / "r.yaml")
    plan = recipe.sources["mj_prompts"]
    assert plan.task == "generation" and SOURCES["midjourney_prompts"] is MidjourneyPrompts
    context = StageContext(build_id="b", seed=0, recipe_dir=recipe.dir, source="mj_prompts", task="generation")
    table = read_all(MidjourneyPrompts(plan.config, context))
    n_lines = len((TINY / "midjourney_prompts.jsonl").read_bytes().splitlines())
    for step in plan.steps:
        stage = STAGES[step.stage](step, context)
        if stage.is_global:
            stage.plan(kept(table).select(["sample_id", "prompt"]).sort_by("sample_id"))
        table = stage.run(table)
    assert table.num_rows == n_lines
    reasons = collections.Counter(table["reason"].to_pylist())
    for reason in ("bad_json", "not_a_string", "empty", "too_short", "too_long", "blocked", "duplicate", "near_duplicate"):
        assert reasons[reason] > 0, reason
    kept_prompts = kept(table)["prompt"].to_pylist()
    assert not any("--" in p or "::" in p or "http" in p or p.startswith("/imagine") for p in kept_prompts)
    assert pc.count_distinct(kept(table)["prompt"]).as_py() == len(kept_prompts)


def test_same_file_name_in_two_folders_keeps_keys_apart(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "p.jsonl").write_text(json.dumps({"prompt": "the same prompt in both files"}) + "\n")
    table = read_all(source(tmp_path, ["a/p.jsonl", "b/p.jsonl"]))
    assert table["source_key"].to_pylist() == ["a/p.jsonl:1", "b/p.jsonl:1"]
    assert len(set(table["sample_id"].to_pylist())) == 2
    with pytest.raises(StageError, match="more than once"):
        source(tmp_path, ["a/p.jsonl", "a/*.jsonl"]).preflight()
