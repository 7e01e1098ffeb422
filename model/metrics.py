"""Per-step JSONL log, ratio drift, and the per-stage loss plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.schema import TASKS


def ratio_drift(rows: dict[str, int], shares: dict[str, float]) -> float:
    """Largest |observed share - recipe share| over tasks in one step's global batch."""
    total = sum(rows.values()) or 1
    return max(abs(rows.get(t, 0) / total - shares[t]) for t in TASKS)


class MetricsLog:
    """Appends one JSON object per step; on resume drops the lines past the checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
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
