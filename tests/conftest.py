"""Shared fixtures: the embedded default model, loaded once, and a small activation store harvested once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gemma():
    """The embedded default model (Gemma 3 270M), fp32 on CPU."""
    from featurescope.models import load_model

    return load_model("default", device="cpu")


@pytest.fixture(scope="session")
def small_store(gemma, tmp_path_factory):
    """3,000 rows of layer-9 activations of wiki-en in shards of 4 contexts."""
    from featurescope.harvest import HarvestConfig, harvest

    out = tmp_path_factory.mktemp("store") / "acts"
    harvest(HarvestConfig(out=str(out), tokens=3000, shard_contexts=4, layer=9), model=gemma, progress=False)
    return out


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m featurescope ARGS` and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "featurescope", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO)
