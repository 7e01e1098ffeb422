"""Per-step JSONL log, ratio drift, model FLOPs / MFU / peak memory, and the per-stage loss plot."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from model.flops import JanusFlops, StepTokens, peak_tflops
from pipeline.schema import TASKS


def ratio_drift(rows: dict[str, int], shares: dict[str, float]) -> float:
    """Largest |observed share - recipe share| over tasks in one step's global batch."""
    total = sum(rows.values()) or 1
    return max(abs(rows.get(t, 0) / total - shares[t]) for t in TASKS)


class StepCost:
    """Per-step model FLOPs, achieved TFLOP/s per device, MFU and peak memory (train.jsonl fields).

    Achieved TFLOP/s = the step's model FLOPs (model/flops.py; the global batch) / the step's wall
    time (compute + data wait, as tokens_per_s) / workers. MFU = that / the device's peak dense
    TFLOP/s for the compute dtype: `peak_tflops` in the recipe, else the GPU table in
    model/flops.py; None on a CPU or an unknown GPU unless the recipe gives it. Peak memory: on a
    GPU torch.cuda.max_memory_allocated over the step (reset after each read); on a CPU the
    process's peak RSS so far (getrusage cannot be reset).
    """

    def __init__(self, config, trained: set[str], precision: str, device: torch.device, workers: int,
                 peak: float | None = None):
        self.flops = JanusFlops(config, trained)
        self.device, self.workers = torch.device(device), workers
        self.cuda = self.device.type == "cuda"
        if peak is None and self.cuda:
            peak = peak_tflops(torch.cuda.get_device_name(self.device), precision)
        self.peak = peak
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def record(self, lengths: list[int], rows: dict[str, int], targets: dict[str, int], seconds: float) -> dict[str, Any]:
        tokens = StepTokens.of_step(lengths, rows, targets)
        flops = self.flops.step(tokens)
        tflops = flops / seconds / self.workers / 1e12 if seconds > 0 else 0.0
        return {"model_flops": flops, "flops_per_token": flops / max(tokens.positions, 1), "tflops": tflops,
                "mfu": tflops / self.peak if self.peak else None, "peak_tflops": self.peak, "peak_mem_gib": self.peak_memory() / 2**30}

    def peak_memory(self) -> int:
        """Bytes: the device's allocator peak since the last call (GPU) or the process's peak RSS (CPU)."""
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return peak
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def cost_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Run totals for the summary/report: FLOPs per token, TFLOP/s and MFU over the steady steps, peak memory."""
    steady = [r for r in (records[1:] or records) if "model_flops" in r]
    if not steady:
        return {}
    seconds = sum(r["step_time"] + r["data_wait"] for r in steady)
    flops = sum(r["model_flops"] for r in steady)
    tflops = flops / seconds / steady[-1]["workers"] / 1e12 if seconds else 0.0
    peak = steady[-1].get("peak_tflops")
    positions = sum(r["model_flops"] / r["flops_per_token"] for r in steady if r["flops_per_token"])
    return {"flops_per_token": flops / positions if positions else 0.0, "tflops": tflops,
            "mfu": tflops / peak if peak else None, "peak_tflops": peak,
            "peak_mem_gib": max(r["peak_mem_gib"] for r in records if "peak_mem_gib" in r)}


class MetricsLog:
    """Appends one JSON object per step; on resume drops the lines past the checkpoint's step.

    A resumed run replays the steps after its checkpoint, so their old records (written before
    the crash) are dropped and rewritten: the log then holds each step once, in order, and the
    records up to the checkpoint are the original run's. A record is one write ending in a
    newline, so a kill mid-write can only leave a last line without one: it is dropped too.
    """

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.is_file():
            complete = path.read_text().split("\n")[:-1]  # the text after the last newline is torn
            kept = [line for line in complete if line and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            path.write_text("")
        self._file = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def plot_losses(records: list[dict[str, Any]], title: str):
    """A matplotlib figure with one loss curve per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for task in TASKS:
        points = [(r["step"], r["loss"][task]) for r in records if task in r["loss"]]
        if points:
            ax.plot(*zip(*points), label=task)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def save_loss_plot(log_path: Path, png_path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig = plot_losses(read_log(log_path), title)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
