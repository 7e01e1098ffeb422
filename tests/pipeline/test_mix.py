"""Mixing: per-batch ratios, source weights, determinism, exhaustion policies, the index format
(payload once, per-shard resume, per-rank reads), export and HF loading."""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.shards import TRAIN_COLUMNS, ShardSet
from pipeline.mix import MixError, SourceRows, batch_task_plan, mix_stage, source_plan
from pipeline.recipe import MixConfig, TrainingStageMix
from pipeline.schema import TASKS, make_rows, to_shard
from pipeline.workdir import write_part


@pytest.mark.parametrize("ratio,batch", [({"understanding": 1, "text": 0, "generation": 3}, 16),
                                         ({"understanding": 2, "text": 3, "generation": 5}, 10),
                                         ({"understanding": 5, "text": 1, "generation": 4}, 7)])
def test_every_batch_holds_the_ratio(ratio, batch):
    plan = batch_task_plan(ratio, batch, 50)
    total = sum(ratio.values())
    for b in range(50):
        window = plan[b * batch:(b + 1) * batch]
        for i, task in enumerate(TASKS):
            target = batch * ratio.get(task, 0) / total
            assert abs(int((window == i).sum()) - target) < 1, (b, task)
    # and the long run is exact to within one row per task
    for i, task in enumerate(TASKS):
        assert abs(int((plan == i).sum()) - len(plan) * ratio.get(task, 0) / total) <= 1


def test_source_weights_hold_in_every_prefix():
    picks = source_plan([1.0, 1.0, 2.0], 1000)
    for n in (10, 97, 500, 1000):
        counts = np.bincount(picks[:n], minlength=3)
        assert np.all(np.abs(counts - n * np.array([0.25, 0.25, 0.5])) <= 1.0)


def _write_source(tmp_path, name, task, n, parts=3):
    files = []
    per = -(-n // parts)
    for p in range(parts):
        rows = [{"task": task, "source": name, "source_key": str(i), "prompt": f"{name} {i}",
                 "text": f"{name} {i}" if task == "text" else None}
                for i in range(p * per, min(n, (p + 1) * per))]
        rows += [{"task": task, "source": name, "source_key": f"bad{p}", "status": "filtered", "reason": "x"}]
        f = tmp_path / "work" / name / f"part-{p:05d}.parquet"
        write_part(f, make_rows(rows))
        files.append(f)
    return SourceRows(name, task, files, n)


def _mix(tmp_path, out_name, policy="repeat", batches=20, sizes=(100, 100, 60)):
    sources = {"real": _write_source(tmp_path, "real", "generation", sizes[0]),
               "synth": _write_source(tmp_path, "synth", "generation", sizes[1]),
               "txt": _write_source(tmp_path, "txt", "text", sizes[2])}
    spec = TrainingStageMix(ratio={"understanding": 0, "text": 1, "generation": 3},
                            sources={"real": 1, "synth": 1, "txt": 1}, batches=batches)
    cfg = MixConfig(seed=7, global_batch=8, rows_per_shard=32, on_exhausted=policy, shuffle_buffer=40, stages={"s": spec})
    return mix_stage("stage2", spec, cfg, sources, tmp_path / out_name / "shards" / "stage2", "b1")


def _rows(build, stage="stage2", **kw):
    """Every position's row, in training order, as the trainer reads it (one rank)."""
    shards = ShardSet.open(build, stage, **kw)
    return [r for r in shards.iter_rows(0)]


def test_mix_writes_ratio_exact_shards_deterministically(tmp_path):
    a = _mix(tmp_path, "a")
    b = _mix(tmp_path, "b")
    files_a = sorted((tmp_path / "a" / "shards" / "stage2").glob("shard-*.parquet"))
    files_b = sorted((tmp_path / "b" / "shards" / "stage2").glob("shard-*.parquet"))
    assert [f.read_bytes() for f in files_a] == [f.read_bytes() for f in files_b]
    assert a.rows == b.rows == 160 and len(files_a) == 5 and a.counts == b.counts
    rows = [dict(r, source=r["prompt"].split()[0]) for r in _rows(tmp_path / "a")]
    assert all(r["prompt"] is not None for r in rows)  # filtered rows (no prompt) never reach shards
    index = pq.read_table(files_a[0])
    assert set(index.column("file").to_pylist()) <= {f"../work/{s}/part-{p:05d}.parquet" for s in ("real", "synth", "txt") for p in range(3)}
    for b_ in range(20):
        tasks = [r["task"] for r in rows[b_ * 8:(b_ + 1) * 8]]
        assert tasks.count("text") == 2 and tasks.count("generation") == 6
    gen = [r["source"] for r in rows if r["task"] == "generation"]
    assert gen.count("real") == gen.count("synth") == 60
    manifest = json.loads((tmp_path / "a" / "shards" / "stage2" / "_manifest.json").read_text())
    assert manifest["global_batch"] == 8 and manifest["counts"] == {"real": 60, "synth": 60, "txt": 40}


def test_repeat_and_upsample_record_events(tmp_path):
    rep = _mix(tmp_path, "rep", batches=40, sizes=(150, 150, 60))  # txt needs 80 rows, has 60
    assert [e["source"] for e in rep.events] == ["txt"] and rep.events[0]["event"] == "repeat"
    rows = _rows(tmp_path / "rep")
    txt = [r["sample_id"] for r in rows if r["task"] == "text"]
    assert len(set(txt)) == 60 and len(txt) == 80
    # repeat replays the first pass's order; upsample shuffles again
    assert txt[60:] == txt[:20]
    up = _mix(tmp_path, "up", policy="upsample", batches=40, sizes=(150, 150, 60))
    up_txt = [r["sample_id"] for r in _rows(tmp_path / "up") if r["task"] == "text"]
    assert up_txt[:60] == txt[:60] and up_txt[60:] != txt[:20]
    assert up.events[0]["event"] == "upsample"


def test_stop_cuts_at_last_full_batch(tmp_path):
    res = _mix(tmp_path, "stop", policy="stop", batches=40, sizes=(150, 150, 60))
    assert res.rows % 8 == 0 and res.rows < 320
    assert res.counts["txt"] <= 60
    assert res.events[0]["event"] == "stop"


def test_empty_source_is_a_clear_error(tmp_path):
    with pytest.raises(MixError, match="'txt' has no kept rows"):
        _mix(tmp_path, "e", sizes=(100, 100, 0))


def _png(colour):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_export_opens_with_hf_datasets_and_decodes_images(tmp_path):
    import datasets

    from pipeline.cli import main

    und = [{"task": "understanding", "source": "u", "source_key": str(i), "image": {"bytes": _png((200, 10, i)), "path": None},
            "conversation": [{"role": "user", "content": "<image_placeholder> colour?"}, {"role": "assistant", "content": "red"}]}
           for i in range(8)]
    gen = [{"task": "generation", "source": "g", "source_key": str(i), "prompt": "red", "image": {"bytes": _png((i, 10, 10)), "path": None},
            "image_tokens": [i, 1, 2, 3], "image_token_grid": [2, 2]} for i in range(8)]
    build = tmp_path / "build"
    write_part(build / "work" / "u" / "part-0.parquet", make_rows(und))
    write_part(build / "work" / "g" / "part-0.parquet", make_rows(gen))
    spec = TrainingStageMix(ratio={"understanding": 1, "generation": 1}, sources={"u": 1, "g": 1}, batches=3)
    cfg = MixConfig(global_batch=8, rows_per_shard=8, stages={"s": spec})
    mix_stage("stage1", spec, cfg, {"u": SourceRows("u", "understanding", [build / "work" / "u" / "part-0.parquet"], 8),
                                    "g": SourceRows("g", "generation", [build / "work" / "g" / "part-0.parquet"], 8)},
              build / "shards" / "stage1", "b")
    assert main(["export", str(build), "--stage", "stage1", "--out", str(tmp_path / "ids"), "--rows-per-file", "10"]) == 0
    assert main(["export", str(build), "--stage", "stage1", "--out", str(tmp_path / "bytes"), "--keep-image-bytes"]) == 0
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "ids" / "*.parquet"), split="train")
    assert isinstance(ds.features["image"], datasets.Image) and len(ds) == 24 and len(list((tmp_path / "ids").glob("*.parquet"))) == 3
    expected = [r["sample_id"] for r in _rows(build, "stage1")]
    assert ds["sample_id"] == expected  # training order, repeats written out
    first_und = next(r for r in ds if r["task"] == "understanding")
    assert first_und["image"].size == (8, 6) and first_und["image"].getpixel((0, 0))[:2] == (200, 10)
    # generation rows: VQ ids, no image bytes by default; --keep-image-bytes keeps them
    assert all(r["image"] is None and len(r["image_tokens"]) == 4 for r in ds if r["task"] == "generation")
    kept = datasets.load_dataset("parquet", data_files=str(tmp_path / "bytes" / "*.parquet"), split="train")
    assert all(r["image"].size == (8, 6) for r in kept if r["task"] == "generation")
    assert to_shard(make_rows(gen[:1])).schema.metadata[b"janus_forge.schema_version"] == b"1"


# Digests of the rows the streaming mixer's materialised shards held for `_mixed_tasks` (computed
# with that code, commit 015b7be, before shards became an index): the index must serve the same rows.
OLD_SHARD_ROWS = {"repeat": (180, "0ad267da0e73773b696b367f4224f0c96aa501bf36c33c7923b6bc186e5f6efa"),
                  "upsample": (180, "48fd3c7bd1ed5042b78197ab2b3a2d9389b97009ec4e606a3a16a211c0c4731e"),
                  "stop": (48, "d4513f137b9f31c5a4e22df7d3d5ef2db16e812b6e41ccae62828e1172195742")}


def _write_task_source(root, name, task, n, parts=3):
    files, per = [], -(-n // parts)
    for p in range(parts):
        rows = []
        for i in range(p * per, min(n, (p + 1) * per)):
            r = {"task": task, "source": name, "source_key": str(i), "prompt": f"{name} {i}"}
            if task == "text":
                r["text"] = f"{name} {i}"
            if task == "understanding":
                r["image"] = {"bytes": f"image {i} ".encode() * 50, "path": None}
                r["conversation"] = [{"role": "user", "content": "<image_placeholder> what?"}, {"role": "assistant", "content": f"a {i}"}]
            if task == "generation":
                r["image"] = {"bytes": f"image {i} ".encode() * 50, "path": None}
                r["image_tokens"], r["image_token_grid"] = [i, i + 1, i + 2, i + 3], [2, 2]
            rows.append(r)
        rows.insert(len(rows) // 2, {"task": task, "source": name, "source_key": f"bad{p}", "status": "filtered", "reason": "x"})
        f = root / "work" / name / f"part-{p:05d}.parquet"
        write_part(f, make_rows(rows))
        files.append(f)
    return SourceRows(name, task, files, n)


def _mixed_tasks(build, policy, run_jobs=None):
    """Three tasks, images and ids, a shuffle window smaller than a source: txt runs out 3 times."""
    sources = {"und": _write_task_source(build, "und", "understanding", 50), "gen": _write_task_source(build, "gen", "generation", 70),
               "txt": _write_task_source(build, "txt", "text", 8)}
    spec = TrainingStageMix(ratio={"understanding": 2, "text": 1, "generation": 3}, sources={"und": 1, "gen": 1, "txt": 1}, batches=30)
    cfg = MixConfig(seed=7, global_batch=6, rows_per_shard=24, on_exhausted=policy, shuffle_buffer=20, stages={"s": spec})
    kw = {"run_jobs": run_jobs} if run_jobs else {}
    return mix_stage("stage2", spec, cfg, sources, build / "shards" / "stage2", "b1", **kw)


def _digest(rows):
    h = hashlib.sha256()
    for r in rows:
        r = {k: r[k] for k in TRAIN_COLUMNS}
        if r["image"] is not None:
            r["image"] = hashlib.sha256(r["image"]["bytes"]).hexdigest()
        h.update(json.dumps(r, sort_keys=True).encode())
    return h.hexdigest()


@pytest.mark.parametrize("policy", ["repeat", "upsample", "stop"])
def test_index_serves_the_rows_the_materialised_shards_held(tmp_path, policy):
    _mixed_tasks(tmp_path, policy)
    rows = _rows(tmp_path, keep_image_bytes=True)
    assert (len(rows), _digest(rows)) == OLD_SHARD_ROWS[policy]
    # by default generation rows carry their VQ ids and no image bytes; understanding rows keep theirs
    lean = _rows(tmp_path)
    assert [r["sample_id"] for r in lean] == [r["sample_id"] for r in rows]
    assert all(r["image"] is None and r["image_tokens"] for r in lean if r["task"] == "generation")
    assert all(r["image"]["bytes"] for r in lean if r["task"] == "understanding")


def test_repeats_reference_the_payload_instead_of_copying_it(tmp_path):
    _mixed_tasks(tmp_path, "repeat")
    stage = tmp_path / "shards" / "stage2"
    index = pa.concat_tables([pq.read_table(f) for f in sorted(stage.glob("shard-*.parquet"))])
    assert index.column_names == ["step", "task", "source", "file", "row"]
    assert index.column("step").to_pylist() == [i // 6 for i in range(180)]
    refs = [(f, r) for f, r, s in zip(*(index.column(c).to_pylist() for c in ("file", "row", "source"))) if s == "txt"]
    assert len(refs) == 30 and len(set(refs)) == 8  # 30 positions, 8 payload rows: repeats are references
    index_bytes = sum(f.stat().st_size for f in stage.glob("shard-*.parquet"))
    payload_bytes = sum(f.stat().st_size for f in (tmp_path / "work").rglob("*.parquet"))
    assert index_bytes < payload_bytes / 3


def test_interrupted_mix_redoes_only_the_missing_shards(tmp_path):
    clean = tmp_path / "clean"
    _mixed_tasks(clean, "repeat")
    stage = lambda b: b / "shards" / "stage2"  # noqa: E731
    want = {f.name: f.read_bytes() for f in stage(clean).glob("shard-*.parquet")}
    assert len(want) == 8

    def interrupted(fn, jobs, orders, tasks):  # a crash after two shards were committed
        for job in jobs[:2]:
            fn(job, orders, tasks)
        raise KeyboardInterrupt

    build = tmp_path / "build"
    with pytest.raises(KeyboardInterrupt):
        _mixed_tasks(build, "repeat", run_jobs=interrupted)
    assert sorted(f.name for f in stage(build).glob("shard-*.parquet")) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert not (stage(build) / "_manifest.json").exists()
    first = stage(build) / "shard-00000.parquet"
    mtime = first.stat().st_mtime_ns
    res = _resume(build)
    assert res.written == 6 and first.stat().st_mtime_ns == mtime
    assert {f.name: f.read_bytes() for f in stage(build).glob("shard-*.parquet")} == want
    (stage(build) / "shard-00005.parquet").unlink()  # a lost shard: only it is redone
    assert _resume(build).written == 1
    assert _resume(build).written == 0
    assert {f.name: f.read_bytes() for f in stage(build).glob("shard-*.parquet")} == want
    assert json.loads((stage(build) / "_manifest.json").read_text()) == json.loads((stage(clean) / "_manifest.json").read_text())


def _resume(build):
    """Mix again over the payload files already there (as a rerun of the build would)."""
    sources = {n: SourceRows(n, t, sorted((build / "work" / n).glob("*.parquet")), k)
               for n, t, k in (("und", "understanding", 50), ("gen", "generation", 70), ("txt", "text", 8))}
    spec = TrainingStageMix(ratio={"understanding": 2, "text": 1, "generation": 3}, sources={"und": 1, "gen": 1, "txt": 1}, batches=30)
    cfg = MixConfig(seed=7, global_batch=6, rows_per_shard=24, on_exhausted="repeat", shuffle_buffer=20, stages={"s": spec})
    return mix_stage("stage2", spec, cfg, sources, build / "shards" / "stage2", "b1")


def test_two_ranks_read_disjoint_halves_whose_union_is_the_global_batch(tmp_path):
    _mixed_tasks(tmp_path, "repeat")
    whole = ShardSet.open(tmp_path, "stage2")
    ranks = [ShardSet.open(tmp_path, "stage2") for _ in range(2)]
    for (first, batch), *per_rank in zip(whole.batches(6, start_step=28), *(s.batches(6, 28, rank=r, world=2) for r, s in enumerate(ranks))):
        assert all(f == first for f, _ in per_rank)
        mine = [rows[r * 3:(r + 1) * 3] for r, (_, rows) in enumerate(per_rank)]
        assert mine[0] + mine[1] == batch  # disjoint halves, together the global batch, in order
        for r, (_, rows) in enumerate(per_rank):
            others = rows[3:] if r == 0 else rows[:3]
            # the other rank's rows: text columns only (for the loss normalisers), no payload
            assert all(o["image"] is None and o["image_tokens"] is None for o in others)
            assert [o["sample_id"] for o in others] == [b["sample_id"] for b in (batch[3:] if r == 0 else batch[:3])]
        if first >= 6 * 32:  # two batches past the end of the stage: wrapped into the next epoch
            break
    # generation rows never read the image column: only understanding payload files did
    image_reads = {path.split("/work/")[1].split("/")[0] for path, col in ranks[0].cache.items if col == "image"}
    assert image_reads == {"und"}


def test_hand_written_hf_features_match_datasets():
    import datasets

    from pipeline.schema import SAMPLE_SCHEMA, shard_schema

    expected = datasets.Features.from_arrow_schema(SAMPLE_SCHEMA)
    expected["image"] = datasets.Image()
    ours = datasets.Features.from_arrow_schema(shard_schema())
    assert ours == expected
