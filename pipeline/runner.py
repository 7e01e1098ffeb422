"""The build runner: recipe → per-source stage chains on Ray Data → mixed shards → catalog.

The only module that imports ray. The unit of work is a partition (a Parquet file of at most
`rows_per_partition` rows); a stage's output for a partition is committed by an atomic rename
and is its own completion marker, so a rerun after a crash skips what is done. Global stages
(dedup across the build) plan on the driver from all kept rows, then map like any other.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from catalog.db import CATALOG_FILE, Catalog
from pipeline import workdir
from pipeline.mix import SourceRows, mix_stage
from pipeline.recipe import Recipe, SourcePlan
from stages.base import SOURCES, STAGES, Stage, StageContext

log = logging.getLogger("janus_forge.build")


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    address: str | None = None
    restart: bool = False  # discard work done under another recipe hash
    # Build only what one training stage mixes (plus the sources no stage mixes: held-out/eval
    # sets) and mix only that stage. A later full build resumes it; the tiny repro builds stage1's
    # data this way, trains stage I, and renders the synthetic share with that checkpoint.
    only: str | None = None


def selected_sources(recipe: Recipe, only: str | None) -> list[str]:
    """The sources a build (or a build of one training stage) runs, in recipe order."""
    if only is None:
        return list(recipe.sources)
    if only not in recipe.mix.stages:
        raise BuildError(f"--only {only}: no such training stage in {recipe.path.name}; known: {sorted(recipe.mix.stages)}")
    mixed = {s for spec in recipe.mix.stages.values() for s in spec.sources}
    wanted = set(recipe.mix.stages[only].sources)
    return [s for s in recipe.sources if s in wanted or s not in mixed]


def build_id_for(recipe: Recipe) -> str:
    """Deterministic: a build is a function of its recipe, so resumed and clean builds agree."""
    return f"{recipe.name}-{recipe.hash[:12]}"


def run_build(recipe: Recipe, options: BuildOptions) -> str:
    out = options.out.resolve()
    build_id = build_id_for(recipe)
    names = selected_sources(recipe, options.only)
    _claim_dir(out, recipe, build_id, options.restart)
    contexts = {name: StageContext(build_id, recipe.seed, recipe.dir, name, recipe.sources[name].task, out) for name in names}
    chains = {name: _instantiate(recipe.sources[name], contexts[name]) for name in names}
    for stages in chains.values():
        for stage in stages:
            stage.preflight()  # weights present, shapes fit: fail before any work
    catalog = Catalog(out / CATALOG_FILE)
    catalog.start_build(build_id, recipe.name, recipe.path, recipe.path.read_text(), recipe.hash, _versions())
    try:
        _init_ray(options.address)
        finals = {name: _run_source(recipe, recipe.sources[name], chains[name], contexts[name], out, catalog) for name in names}
        for stage_name, spec in recipe.mix.stages.items():
            if options.only is not None and stage_name != options.only:
                continue
            used = {s: finals[s] for s in spec.sources}
            log.info("mixing %s: %d batches of %d", stage_name, spec.batches, recipe.mix.global_batch)
            result = mix_stage(stage_name, spec, recipe.mix, used, out / "shards" / stage_name, build_id, run_jobs=_ray_shards)
            log.info("%s: %d index shards written, %d already done", stage_name, result.written,
                     len({s["path"] for s in result.shards}) - result.written)
            catalog.record_shards(build_id, stage_name, result.shards, result.events)
            _log_events(stage_name, result.events)
        catalog.refresh_samples_view(out / "shards")
        catalog.finish_build(build_id, "succeeded")
        log.info("build %s done: %s", build_id, out)
        return build_id
    except BaseException as err:
        catalog.finish_build(build_id, "failed", f"{type(err).__name__}: {err}")
        raise
    finally:
        catalog.close()


def _log_events(stage_name: str, events: list[dict]) -> None:
    """One line per source that ran out (the catalog's mix_events keeps every pass)."""
    by_source: dict[str, list[dict]] = {}
    for event in events:
        by_source.setdefault(event["source"], []).append(event)
    for source, evs in by_source.items():
        log.info("%s: %s ran out %d time(s); policy %s (mix_events has each)", stage_name, source, len(evs), evs[0]["event"])


def _claim_dir(out: Path, recipe: Recipe, build_id: str, restart: bool) -> None:
    """One build per directory; a different recipe hash is refused unless restart is asked for."""
    marker = out / "build.json"
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous["recipe_hash"] != recipe.hash:
            if not restart:
                raise BuildError(
                    f"{out} holds build {previous['build_id']} of another recipe version "
                    f"(hash {previous['recipe_hash'][:12]}, now {recipe.hash[:12]}); its outputs would differ. "
                    "Use another --out, or --restart to discard that work."
                )
            for sub in ("work", "shards"):
                shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    workdir.write_atomic(marker, json.dumps({"build_id": build_id, "recipe": str(recipe.path), "recipe_hash": recipe.hash}, indent=2).encode())


def _instantiate(plan: SourcePlan, context: StageContext) -> list[Stage]:
    return [STAGES[step.stage](step, context) for step in plan.steps]


def _init_ray(address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(include_dashboard=False, log_to_driver=True, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True


def _run_source(recipe: Recipe, plan: SourcePlan, stages: list[Stage], context: StageContext, out: Path, catalog: Catalog) -> SourceRows:
    source = SOURCES[plan.config.kind](plan.config, context)
    source.preflight()
    root = out / "work" / plan.name
    read_dir = root / f"00-{plan.config.kind}"
    t0 = time.perf_counter()
    files = source.files()
    todo = [i for i in range(len(files)) if not workdir.file_done(read_dir, i)]
    log.info("%s: reading %d files (%d already done)", plan.name, len(files), len(files) - len(todo))
    if todo:
        _map_items([{"file": i, "path": str(files[i])} for i in todo], _ReadFiles(source, read_dir, recipe.rows_per_partition), plan.name, "read")
    parts = workdir.list_parts(read_dir, len(files))
    read_files = [read_dir / p for p in parts]
    rows = catalog.record_stage(context.build_id, plan.name, 0, plan.config.kind, read_files, workdir.count_rows(read_files), time.perf_counter() - t0)
    prev_dir, prev_kept = read_dir, rows["rows_kept"]
    _reopen(stages, root, parts, plan.name)
    for segment in _segments(stages):
        dirs = [root / f"{step:02d}-{stage.name}" for step, stage in segment]
        todo = [p for p in parts if not all((d / p).exists() for d in dirs)]
        log.info("%s steps %s: %d partitions (%d already done)", plan.name,
                 ", ".join(f"{n}.{s.name}" for n, s in segment), len(parts), len(parts) - len(todo))
        if todo:
            _run_segment(segment, dirs, prev_dir, parts, todo, plan.name)
        for (step, stage), stage_dir in zip(segment, dirs):
            files = [stage_dir / p for p in parts]
            counts = catalog.record_stage(context.build_id, plan.name, step, stage.name, files, prev_kept, workdir.seconds(files))
            log.info("%s %s: in %d, kept %d, filtered %d, failed %d", plan.name, stage.name, counts["rows_in"],
                     counts["rows_kept"], counts["rows_filtered"], counts["rows_failed"])
            prev_dir, prev_kept = stage_dir, counts["rows_kept"]
    return SourceRows(plan.name, plan.task, [prev_dir / p for p in parts], prev_kept)


def _reopen(stages: list[Stage], root: Path, parts: list[str], source: str) -> None:
    """Uncommit the partitions a stage wants redone on resume (downloads that failed transiently).

    The stage's committed output moves to <step dir>/_previous/, where the redo reads it back
    (what was final is kept, attempts are counted); outputs of later steps built on those
    partitions are removed, and every output of a later global stage, whose plan saw them all.
    Crash-safe in any order: a removed output is simply redone, a moved one is found again.
    """
    dirs = [root / f"{step:02d}-{stage.name}" for step, stage in enumerate(stages, start=1)]
    for k, stage in enumerate(stages):
        if (dirs[k] / "_previous").is_dir():  # a crash between a redo's commit and its cleanup
            for p in parts:
                if (dirs[k] / p).exists():
                    workdir.previous_output(dirs[k], p).unlink(missing_ok=True)
        reopened = [p for p in parts if (dirs[k] / p).exists() and stage.reopen(dirs[k] / p)]
        if not reopened:
            continue
        log.info("%s %s: reopening %d partitions with retryable rows", source, stage.name, len(reopened))
        every = False
        for j in range(k + 1, len(stages)):
            every = every or stages[j].is_global
            for p in parts if every else reopened:
                (dirs[j] / p).unlink(missing_ok=True)
        for p in reopened:
            workdir.previous_output(dirs[k], p).parent.mkdir(exist_ok=True)
            os.replace(dirs[k] / p, workdir.previous_output(dirs[k], p))


def _segments(stages: list[Stage]) -> list[list[tuple[int, Stage]]]:
    """Consecutive steps that stream through one Ray Data pipeline; a global stage starts a new one."""
    segments: list[list[tuple[int, Stage]]] = []
    for step, stage in enumerate(stages, start=1):
        if stage.is_global or not segments:
            segments.append([])
        segments[-1].append((step, stage))
    return segments


def _run_segment(segment, dirs: list[Path], prev_dir: Path, parts: list[str], todo: list[str], source: str) -> None:
    import ray

    first = segment[0][1]
    if first.is_global and not all((dirs[0] / p).exists() for p in parts):
        first.plan(workdir.read_kept(prev_dir, parts, ["sample_id", *first.needs]).sort_by("sample_id"))
    ds = ray.data.from_items([{"part": p} for p in todo], override_num_blocks=len(todo))
    in_dir = prev_dir
    for ((_, stage), out_dir) in zip(segment, dirs):
        res = stage.resources()
        udf = _RunStage(stage, in_dir, out_dir)
        if res.actors:
            # one UDF copy per actor: models load once per actor in stage.setup()
            ds = ds.map_batches(_ActorUDF, fn_constructor_args=(udf,), batch_size=1, concurrency=res.actors,
                                num_cpus=res.cpus, num_gpus=res.gpus)
        else:
            ds = ds.map_batches(udf, batch_size=1, num_cpus=res.cpus, num_gpus=res.gpus)
        in_dir = out_dir
    ds.materialize()
    log.debug("%s: segment of %d steps done for %d partitions", source, len(segment), len(todo))


class _ReadFiles:
    """Ray UDF: one input file → committed partitions + a done marker listing them."""

    def __init__(self, source, out_dir: Path, rows_per_partition: int):
        self.source, self.out_dir, self.rows = source, out_dir, rows_per_partition

    def __call__(self, batch: dict) -> dict:
        for index, path in zip(batch["file"], batch["path"]):
            workdir.read_file_into_parts(self.source, Path(path), int(index), self.out_dir, self.rows)
        return {"file": batch["file"]}


class _RunStage:
    """Ray UDF: a partition's kept rows from the previous step → this stage's verdicts, committed."""

    def __init__(self, stage: Stage, in_dir: Path, out_dir: Path):
        self.stage, self.in_dir, self.out_dir = stage, in_dir, out_dir

    def __call__(self, batch: dict) -> dict:
        for part in batch["part"]:
            if (self.out_dir / part).exists():
                continue
            table = workdir.read_kept(self.in_dir, [part])
            previous = workdir.previous_output(self.out_dir, part)
            t0 = time.perf_counter()
            if previous.exists() and table.num_rows:  # reopened on resume (see _reopen)
                result = self.stage.resume(table, pq.read_table(previous))
            else:
                result = self.stage.run(table) if table.num_rows else table
            workdir.write_part(self.out_dir / part, result, seconds=time.perf_counter() - t0)
            self.stage.committed()
            previous.unlink(missing_ok=True)
        return {"part": batch["part"]}


def _ray_shards(write_shard, jobs: list, orders: list, tasks: list) -> list[dict]:
    """One Ray task per index shard (pipeline/mix.py): each rebuilds its rows' order on its own."""
    import ray

    if not jobs:
        return []
    remote = ray.remote(num_cpus=1)(write_shard)
    orders_ref = ray.put(orders)  # shared by every task, sent once
    return ray.get([remote.remote(job, orders_ref, tasks) for job in jobs])


def _map_items(items: list[dict], udf, source: str, what: str) -> None:
    """Run `udf` over items as Ray tasks, one item per block."""
    import ray

    ray.data.from_items(items, override_num_blocks=len(items)).map_batches(udf, batch_size=1).materialize()
    log.debug("%s %s: %d items done", source, what, len(items))


class _ActorUDF:
    def __init__(self, udf):
        self.udf = udf

    def __call__(self, batch: dict) -> dict:
        return self.udf(batch)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("janus-forge", "ray", "pyarrow", "duckdb", "torch", "transformers", "open-clip-torch", "img2dataset", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
