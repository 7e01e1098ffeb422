"""Shared test setup: offline, no telemetry, one local Ray for the whole session."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# The tiny preset fits its VQ on the shapes world when built (a CPU minute or two); tests build it
# in many places, so one fit per session is cached (keyed by spec, seed and the fitting code).
os.environ.setdefault("JANUS_FORGE_VQ_CACHE", tempfile.mkdtemp(prefix="janus-forge-vq-"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray (2 CPUs), started once; the runner reuses it instead of starting its own."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()
