"""A test-only stage that lets a test kill the Ray worker running it, mid-stage.

`hold_for_kill` passes rows through unchanged. In a build whose directory holds `arm`, the first
task to reach it writes its worker's pid to `held.pid` (with the partition's first sample_id) and
waits to be killed; the task Ray retries for that partition finds the file, writes `retried.pid`
and goes on. Unarmed builds (the clean one to compare with) never wait.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa

from stages.base import Stage, StageConfig, register


class HoldConfig(StageConfig):
    wait_s: float = 120.0


@register
class HoldForKill(Stage):
    name = "hold_for_kill"
    Config = HoldConfig

    def process(self, batch: pa.Table) -> pa.Table:
        build = Path(self.context.build_dir)
        if not (build / "arm").exists() or not batch.num_rows:
            return batch
        first = batch.column("sample_id")[0].as_py()
        held = build / "held.pid"
        try:
            fd = os.open(held, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another partition holds, or this is the retry of the held one
            if held.read_text().split()[1] == first:
                (build / "retried.pid").write_text(str(os.getpid()))
            return batch
        os.write(fd, f"{os.getpid()} {first}".encode())
        os.close(fd)
        time.sleep(self.config.wait_s)  # killed here by the test
        raise RuntimeError("the test did not kill this worker")
