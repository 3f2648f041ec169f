"""Fixtures of the suite's tests: a small feature database (AutoInterp, the stored results)."""

from __future__ import annotations

import pytest
import torch

from featurescope.activations import ActivationStore
from featurescope.analysis import AnalyzeConfig, analyze
from featurescope.sae import SAE, SAEConfig


@pytest.fixture(scope="session")
def tiny_db(gemma, small_store, tmp_path_factory):
    """An analysis of 1,000 tokens with a random TopK SAE of 32 features (centred on the data)."""
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
