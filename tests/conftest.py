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


@pytest.fixture(scope="session")
def tiny_db(gemma, small_store, tmp_path_factory):
    """The suite's small feature database (AutoInterp, stored results): an analysis of 1,000 tokens with a random
    TopK SAE of 32 features (centred on the data). Returns (database, SAE folder, SAE)."""
    import torch

    from featurescope.activations import ActivationStore
    from featurescope.analysis import AnalyzeConfig, analyze
    from featurescope.sae import SAE, SAEConfig

    tmp = tmp_path_factory.mktemp("autointerp")
    sae = SAE.create(SAEConfig(d_in=640, d_sae=32, architecture="topk", k=4, model="default", layer=9), seed=1)
    x = ActivationStore(small_store).rows(0, 1000)
    with torch.no_grad():
        sae.input_scale.fill_(640**0.5 / float(x.norm(dim=1).mean()))
        sae.b_dec.copy_((x * sae.input_scale).mean(0))
    sae.save(tmp / "sae")
    analyze(AnalyzeConfig(sae=str(tmp / "sae"), out=str(tmp / "f.db"), activations=str(small_store), tokens=1000,
                          map="none", top_k=3, per_interval=3, window=16), model=gemma, progress=False)
    return tmp / "f.db", tmp / "sae", sae
