"""Mixing: per-batch ratios, source weights, determinism, exhaustion policies, HF loading."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

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
    return mix_stage("stage2", spec, cfg, sources, tmp_path / out_name / "stage2", "b1")


def test_mix_writes_ratio_exact_shards_deterministically(tmp_path):
    a = _mix(tmp_path, "a")
    b = _mix(tmp_path, "b")
    files_a = sorted((tmp_path / "a" / "stage2").glob("shard-*.parquet"))
    files_b = sorted((tmp_path / "b" / "stage2").glob("shard-*.parquet"))
    assert [f.read_bytes() for f in files_a] == [f.read_bytes() for f in files_b]
    assert a.rows == b.rows == 160 and len(files_a) == 5 and a.counts == b.counts
    rows = [r for f in files_a for r in pq.read_table(f).to_pylist()]
    assert all(r["source_key"][:3] != "bad" for r in rows)  # filtered rows never reach shards
    for b_ in range(20):
        tasks = [r["task"] for r in rows[b_ * 8:(b_ + 1) * 8]]
        assert tasks.count("text") == 2 and tasks.count("generation") == 6
    gen = [r["source"] for r in rows if r["task"] == "generation"]
    assert gen.count("real") == gen.count("synth") == 60
    manifest = json.loads((tmp_path / "a" / "stage2" / "_manifest.json").read_text())
    assert manifest["global_batch"] == 8 and manifest["counts"] == {"real": 60, "synth": 60, "txt": 40}


def test_repeat_and_upsample_record_events(tmp_path):
    rep = _mix(tmp_path, "rep", batches=40, sizes=(150, 150, 60))  # txt needs 80 rows, has 60
    assert [e["source"] for e in rep.events] == ["txt"] and rep.events[0]["event"] == "repeat"
    rows = [r for f in sorted((tmp_path / "rep" / "stage2").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    txt = [r["sample_id"] for r in rows if r["source"] == "txt"]
    assert len(set(txt)) == 60 and len(txt) == 80
    # repeat replays the first pass's order; upsample shuffles again
    assert txt[60:] == txt[:20]
    up = _mix(tmp_path, "up", policy="upsample", batches=40, sizes=(150, 150, 60))
    up_rows = [r for f in sorted((tmp_path / "up" / "stage2").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    up_txt = [r["sample_id"] for r in up_rows if r["source"] == "txt"]
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


def test_shards_open_with_hf_datasets_and_decode_images(tmp_path):
    import io

    import datasets
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(buf, format="PNG")
    rows = [{"task": "generation", "source": "g", "source_key": str(i), "prompt": "red",
             "image": {"bytes": buf.getvalue(), "path": None}} for i in range(16)]
    f = tmp_path / "g.parquet"
    write_part(f, make_rows(rows))
    spec = TrainingStageMix(ratio={"generation": 1}, sources={"g": 1}, batches=2)
    cfg = MixConfig(global_batch=8, rows_per_shard=8, stages={"s": spec})
    mix_stage("stage1", spec, cfg, {"g": SourceRows("g", "generation", [f], 16)}, tmp_path / "shards" / "stage1", "b")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "shards" / "stage1" / "*.parquet"), split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    img = ds[0]["image"]
    assert img.size == (8, 6) and img.getpixel((0, 0)) == (200, 10, 10)
    assert to_shard(make_rows(rows[:1])).schema.metadata[b"janus_forge.schema_version"] == b"1"


def test_hand_written_hf_features_match_datasets():
    import datasets

    from pipeline.schema import SAMPLE_SCHEMA, shard_schema

    expected = datasets.Features.from_arrow_schema(SAMPLE_SCHEMA)
    expected["image"] = datasets.Image()
    ours = datasets.Features.from_arrow_schema(shard_schema())
    assert ours == expected
