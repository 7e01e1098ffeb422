"""Sharded state (FSDP, 2 CPU workers on gloo): DCP checkpoints written per rank and resumed on the
same loss curve, a truncated checkpoint skipped, gradient accumulation without a reduce-scatter
per micro-batch, sharded init, and activation checkpointing that changes no number.

The two workers are processes forked with torch.multiprocessing (a gloo group over a FileStore)
running the real Trainer: the Ray Train launcher around it is covered by test_distributed.py
(whose FSDP run now writes sharded checkpoints and a consolidated final/ too), and starting Ray
twice would cost most of this module's time budget. "Stop and resume" is two launches: the
resumed run is new processes in a new process group that know only the run dir."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

from model.checkpoint import SHARDED_DIR, Checkpointer, consolidate
from model.config import load_train_recipe
from model.train import Trainer
from tests.model.test_train import TIMING, records, recipe_file, weights


def rank_tensor_bytes(checkpoint: Path, prefix: str) -> dict[str, int]:
    """Bytes of the state under `prefix` that each DCP file holds (from DCP's own metadata)."""
    meta = FileSystemReader(checkpoint / SHARDED_DIR).read_metadata()
    per_file: dict[str, int] = {}
    for fqn, item in meta.state_dict_metadata.items():
        if fqn.startswith(prefix) and isinstance(item, TensorStorageMetadata):
            for chunk in item.chunks:
                where = meta.storage_data[MetadataIndex(fqn, chunk.offsets)].relative_path
                per_file[where] = per_file.get(where, 0) + math.prod(chunk.sizes) * item.properties.dtype.itemsize
    return per_file


STAGE2_TRAINS = ["aligner", "generation_embeddings", "generation_aligner", "generation_head", "language_model", "lm_head"]


def tiny_micro_batches(processor, seed: int, n: int = 8, micro: int = 2) -> tuple[list, dict]:
    """n mixed rows (understanding with images, text, generation with VQ ids) in micro-batches of `micro`."""
    from model.data import Encoder, micro_batches
    from tests.model.conftest import sample_rows

    enc = Encoder(processor, 256, 0.0, seed=seed, num_image_tokens=processor.num_image_tokens)
    ids = [[(7 * i + k) % 256 for k in range(processor.num_image_tokens)] for i in range(3)]
    rows = sample_rows(n, {"understanding": 1, "text": 1, "generation": 2}, seed=seed, image_tokens=ids, with_image=False)
    examples = [enc.encode(row, i) for i, row in enumerate(rows)]
    counts = {t: sum(ex.targets for ex in examples if ex.task == t) for t in ("understanding", "text", "generation")}
    return micro_batches(examples, micro, enc.pad, processor.image_processor), counts


def _worker(rank: int, world: int, store: str, job: dict) -> None:
    """One of two gloo ranks: the accumulation measurement (if asked), then a Trainer run (if asked)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        if "accumulate" in job:
            _accumulate(rank, world, job["tiny_dir"], job["accumulate"])
        if "train" in job:
            recipe = load_train_recipe(job["recipe"], data=job["data"], init=job["tiny_dir"])
            Trainer(recipe, Path(job["train"]), resume=job["resume"]).train()
    finally:
        dist.destroy_process_group()
    # Done and written: leave without the interpreter's teardown, where a worker once died of
    # SIGSEGV after finishing its run (gloo / torch thread pools at exit; CI on a fresh clone).
    import logging
    import sys

    logging.shutdown()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


def spawn(timeout_s: float = 300, **job) -> None:
    """Two gloo workers, spawned: forked ones crashed (SIGSEGV) once earlier tests in the same
    process had run Ray Train and torch's thread pools; a hang fails the test instead of blocking
    the suite."""
    import time

    import torch.multiprocessing as mp

    store = Path(job.pop("store"))
    workers = mp.start_processes(_worker, args=(2, str(store), job), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not workers.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for proc in workers.processes:
                proc.kill()
            raise AssertionError(f"sharded workers still running after {timeout_s} s")


def _accumulate(rank: int, world: int, tiny_dir: str, out: str) -> None:
    """Shard the tiny model, then one step accumulated over 4 micro-batches, once syncing only on
    the last (no_sync) and once syncing on every micro-batch."""
    import contextlib

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from model.freeze import apply_freezing
    from model.losses import JanusLoss, combine
    from model.parallel import World, decoder_layers, no_sync, parallelize
    from model.tiny import load_janus, load_janus_empty

    torch.manual_seed(0)
    # as the Trainer does: rank 0 reads the weights, rank 1 builds the model on the meta device
    model, processor = (load_janus if rank == 0 else load_janus_empty)(tiny_dir, dtype=torch.float32)
    apply_freezing(model, STAGE2_TRAINS)
    module = JanusLoss(model, touch_all=True)

    def held(params) -> int:  # bytes of parameter storage this rank holds (meta holds none)
        local = [p.to_local() if isinstance(p, DTensor) else p for p in params]
        return sum(t.nbytes for t in local if not t.is_meta)

    before = {"layers": held(decoder_layers(module).parameters()), "model": held(module.parameters())}
    module = parallelize(module, World(rank, world, torch.device("cpu")), fsdp=True)
    after = {"layers": held(decoder_layers(module).parameters()), "model": held(module.parameters())}
    full_layers = sum(p.numel() * 4 for p in decoder_layers(module).parameters())
    with torch.no_grad():  # rank 1 holds rank 0's weights: a layer's (gathered) and the VQ's (kept whole)
        sums = [p.full_tensor().sum().item() for p in decoder_layers(module)[0].parameters()]
        sums += [p.sum().item() for p in module.model.model.vqmodel.parameters()]
    micro, counts = tiny_micro_batches(processor, seed=rank)
    totals = torch.tensor([counts[t] for t in sorted(counts)], dtype=torch.float64)
    dist.all_reduce(totals)
    counts = dict(zip(sorted(counts), totals.long().tolist()))
    weights = {"understanding": 0.25, "text": 0.25, "generation": 0.5}
    calls = []
    reduce_scatter = dist.reduce_scatter_single

    def counted(*args, **kwargs):  # the real collective, counted
        calls.append(1)
        return reduce_scatter(*args, **kwargs)

    dist.reduce_scatter_single = counted
    results = {}
    for mode in ("accumulate", "sync_each"):
        module.zero_grad(set_to_none=True)
        calls.clear()
        for i, mb in enumerate(micro):
            ctx = no_sync(module, last=i == len(micro) - 1) if mode == "accumulate" else contextlib.nullcontext()
            with ctx:
                (combine(module(mb), weights, counts) * world).backward()
        grads = {n: p.grad.full_tensor() for n, p in module.named_parameters() if p.grad is not None}
        results[mode] = (len(calls), grads)
    a, s = results["accumulate"][1], results["sync_each"][1]
    diff = max((a[n] - s[n]).abs().max().item() for n in a)
    groups = len(decoder_layers(module)) + 1
    Path(f"{out}.{rank}").write_text(json.dumps({
        "calls": {m: r[0] for m, r in results.items()}, "groups": groups, "micro": len(micro), "max_grad_diff": diff,
        "same_keys": a.keys() == s.keys(), "grads": len(a), "before": before, "after": after, "full_layers": full_layers,
        "weight_sums": sums}))
    dist.reduce_scatter_single = reduce_scatter


@pytest.mark.slow
def test_sharded_checkpoint_resume_continues_the_uninterrupted_loss_curve(tmp_path, tiny_dir, tiny_build, caplog):
    # 16-row steps on 2 workers x micro 2: four micro-batches per worker per step (accumulated
    # without a reduce-scatter until the last); checkpoints at steps 2, 4 and 5.
    recipe = recipe_file(tmp_path, 2, schedule__steps=5, checkpoint_every=2, keep_checkpoints=3, batch__micro=2, fsdp=True)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    job = {"tiny_dir": str(tiny_dir), "data": str(tiny_build), "recipe": str(recipe)}
    spawn(store=tmp_path / "store1", accumulate=str(tmp_path / "accumulate.json"), train=str(full), resume=False, **job)

    # Gradient accumulation: one reduce-scatter per FSDP group (each decoder layer, the root) per
    # step, not per micro-batch, and the same gradients as syncing every micro-batch.
    r0, r1 = (json.loads((tmp_path / f"accumulate.json.{r}").read_text()) for r in (0, 1))
    for acc in (r0, r1):
        assert acc["micro"] == 4
        assert acc["calls"] == {"accumulate": acc["groups"], "sync_each": acc["micro"] * acc["groups"]}, acc
        assert acc["same_keys"] and acc["grads"] > 0 and acc["max_grad_diff"] < 1e-6, acc
        # Sharded init, measured: after sharding a rank holds half of every decoder layer's bytes
        assert acc["after"]["layers"] == pytest.approx(acc["full_layers"] / 2, rel=0.05), acc
    # rank 0 read the whole model; rank 1 held no parameter storage before sharding (meta device),
    # and after it less than rank 0 had before (its shards, plus the frozen VQ kept whole)
    assert r0["before"]["layers"] == r0["full_layers"] and r1["before"] == {"layers": 0, "model": 0}, (r0, r1)
    assert r1["after"]["model"] < 0.8 * r0["before"]["model"], (r0, r1)
    assert r1["weight_sums"] == pytest.approx(r0["weight_sums"])

    # No rank wrote the whole state: each file holds about half of the sharded decoder layers
    # (weights and both AdamW moments), by DCP's own record of what went where.
    step4 = full / "checkpoints" / "step-00000004"
    layers = rank_tensor_bytes(step4, "model.model.model.language_model.layers.")
    layer_bytes = sum(v.numel() * 4 for k, v in weights(tiny_dir).items() if k.startswith("model.language_model.layers."))
    assert sorted(layers) == ["__0_0.distcp", "__1_0.distcp"]
    assert all(0.45 * layer_bytes <= n <= 0.55 * layer_bytes for n in layers.values()), (layers, layer_bytes)
    moments = rank_tensor_bytes(step4, "optimizer.state.model.model.language_model.layers.")
    assert all(0.45 * 2 * layer_bytes <= n <= 0.55 * 2 * layer_bytes for n in moments.values()), moments
    files = {f.name: f.stat().st_size for f in (step4 / SHARDED_DIR).glob("*.distcp")}
    assert max(files.values()) < 0.75 * sum(files.values()), files

    # "Stopped after step 4": a run dir with the checkpoints of steps 2 and 4 and the log; then
    # one rank's shard file of step 4 is truncated (a copy cut short).
    (resumed / "checkpoints").mkdir(parents=True)
    for name in ("step-00000002", "step-00000004"):
        shutil.copytree(full / "checkpoints" / name, resumed / "checkpoints" / name)
    (resumed / "checkpoints" / "latest").write_text("step-00000004")
    shutil.copy(full / "train.jsonl", resumed / "train.jsonl")
    shard = resumed / "checkpoints" / "step-00000004" / SHARDED_DIR / "__1_0.distcp"
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="janus_forge.checkpoint"):
        assert Checkpointer(resumed).latest().name == "step-00000002"
    assert "step-00000004: sharded/__1_0.distcp has" in caplog.text and "previous complete one" in caplog.text

    spawn(store=tmp_path / "store2", train=str(resumed), resume=True, **job)  # fresh processes and group
    a, b = records(full), records(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    assert b[:2] == a[:2]  # the stopped run's records up to its checkpoint, kept as written
    for x, y in zip(a[2:], b[2:]):  # steps 3..5 recomputed after resuming from step 2: bit for bit
        assert y["time"] > x["time"]  # re-run, not the copied lines
        assert {k: v for k, v in y.items() if k not in TIMING} == {k: v for k, v in x.items() if k not in TIMING}, y["step"]
    # DCP reshards: one process (full format) resumes from the 2-worker sharded checkpoint of step 4
    single = tmp_path / "single"
    shutil.copytree(full / "checkpoints" / "step-00000004", single / "checkpoints" / "step-00000004")
    (single / "checkpoints" / "latest").write_text("step-00000004")
    shutil.copy(full / "train.jsonl", single / "train.jsonl")
    Trainer(load_train_recipe(recipe, data=tiny_build, init=tiny_dir), single, resume=True).train()
    last = records(single)[4]["loss"]
    assert len(records(single)) == 5 and all(last[t] == pytest.approx(a[4]["loss"][t], rel=1e-4) for t in last)
    # final/ is a consolidated model dir; consolidating the last sharded checkpoint gives the same weights
    end_a, end_b = weights(full / "final"), weights(resumed / "final")
    whole = weights(consolidate(full / "checkpoints" / "step-00000005", tmp_path / "consolidated"))
    assert end_a.keys() == end_b.keys() == whole.keys()
    for k in end_a:
        torch.testing.assert_close(end_b[k], end_a[k], rtol=1e-6, atol=1e-7)
        assert torch.equal(whole[k], end_a[k]), k


def test_sharded_activation_checkpointing_keeps_loss_and_grads(tiny_dir):
    from model.freeze import apply_freezing
    from model.losses import JanusLoss, combine
    from model.parallel import World, decoder_layers, parallelize
    from model.tiny import load_janus

    results = {}
    for ac in (False, True):
        model, processor = load_janus(tiny_dir, dtype=torch.float32)
        apply_freezing(model, STAGE2_TRAINS)
        model.train()  # checkpointing applies in training mode only
        module = parallelize(JanusLoss(model), World(), fsdp=False, activation_checkpointing=ac)
        forwards = []
        decoder_layers(module)[0].self_attn.register_forward_hook(lambda *_: forwards.append(1))
        micro, counts = tiny_micro_batches(processor, seed=1)
        torch.manual_seed(0)
        loss = sum(combine(module(mb), {"understanding": 0.25, "text": 0.25, "generation": 0.5}, counts) for mb in micro)
        loss.backward()
        results[ac] = loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, len(forwards)
    (plain, plain_grads, plain_fwd), (ckpt, ckpt_grads, ckpt_fwd) = results[False], results[True]
    assert (plain_fwd, ckpt_fwd) == (len(micro), 2 * len(micro))  # layer 0 recomputed in backward: the switch is on
    assert ckpt == pytest.approx(plain, rel=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_sharded_manifest_fallback_and_legacy_checkpoints(tmp_path, caplog):
    """latest() on real files: a checkpoint whose manifest does not match is passed over for the
    previous complete one (here one written before manifests, which still loads); none complete
    is an error that names each checkpoint's problem."""
    from model.checkpoint import STATE_FILE, CheckpointError, checkpoint_format, write_manifest

    root = tmp_path / "checkpoints"
    old, new = root / "step-00000001", root / "step-00000002"
    for path in (old, new):
        (path / SHARDED_DIR).mkdir(parents=True)
    (old / STATE_FILE).write_bytes(b"s" * 10)
    (old / "model.safetensors").write_bytes(b"w" * 100)  # legacy full checkpoint: no manifest
    (new / STATE_FILE).write_bytes(b"s" * 10)
    (new / SHARDED_DIR / "__0_0.distcp").write_bytes(b"x" * 100)
    write_manifest(new, "sharded")
    (root / "latest").write_text(new.name)
    assert Checkpointer(tmp_path).latest() == new and checkpoint_format(new) == "sharded"
    (new / SHARDED_DIR / "__0_0.distcp").unlink()
    with caplog.at_level(logging.WARNING, logger="janus_forge.checkpoint"):
        assert Checkpointer(tmp_path).latest() == old and checkpoint_format(old) == "full"
    assert "step-00000002: sharded/__0_0.distcp is missing" in caplog.text
    (old / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no complete checkpoint.*step-00000002.*missing.*step-00000001: no readable manifest"):
        Checkpointer(tmp_path).latest()
