"""`janus-forge repro` without the trainer's dependencies stops with a clear error; it never skips training."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# What a venv without transformers looks like to Python: `import transformers` raises ImportError.
WITHOUT_TRANSFORMERS = """
import sys
sys.modules["transformers"] = None
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_repro_without_a_trainer_dependency_fails_and_says_what_to_install(tmp_path):
    out = tmp_path / "repro"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-c", WITHOUT_TRANSFORMERS, "repro", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the trainer cannot be imported" in proc.stderr and "transformers" in proc.stderr
    assert "pip install -e ." in proc.stderr and "--no-train" in proc.stderr
    # it stopped before any work: no data built, nothing trained, no report claiming success
    assert not (out / "build").exists() and not (out / "train").exists() and not (out / "report.html").exists()
