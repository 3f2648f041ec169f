"""Kill -9 anywhere: `export` leaves the old or the new complete folder (a rerun finishes it), `probe` leaves
a whole feature database (a rerun finishes it)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from featurescope.activations import ActivationStore
from featurescope.analysis import AnalyzeConfig, analyze
from featurescope.featuredb.core import FeatureStore
from featurescope.sae import SAE, SAEConfig
from featurescope.sae.io import export


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "featurescope", "-q", *args]


def _killed_at(cmd: list[str], delay: float) -> None:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# slow: nine export processes (~46 s on a fresh clone); the killed harvest and train tests stay in make test
@pytest.mark.slow
def test_export_killed_anywhere_leaves_a_whole_folder(tmp_path):
    sae_dir = SAE.create(SAEConfig(d_in=64, d_sae=256, architecture="topk", k=4), seed=0).save(tmp_path / "sae")
    sae = SAE.load(sae_dir)
    export(sae, tmp_path / "ref-saelens", "saelens")
    export(sae, tmp_path / "ref-sparsify", "sparsify")
    out = tmp_path / "out"
    export(sae, out, "saelens")
    versions = [_files(tmp_path / "ref-saelens"), _files(tmp_path / "ref-sparsify")]
    cmd = _cli("export", str(sae_dir), "--format", "sparsify", "--out", str(out), "--overwrite")
    start = time.perf_counter()
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    full = time.perf_counter() - start
    export(sae, out, "saelens", overwrite=True)
    rng = random.Random(0)
    for i in range(4):
        _killed_at(cmd, full * (i + rng.random()) / 4)
        if out.exists():
            assert _files(out) in versions
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert _files(out) == versions[1]
        export(sae, out, "saelens", overwrite=True)


@pytest.mark.slow
def test_probe_killed_anywhere_leaves_a_whole_database(gemma, small_store, tmp_path):
    sae = SAE.create(SAEConfig(d_in=640, d_sae=64, architecture="topk", k=4, model="default", layer=9), seed=3)
    x = ActivationStore(small_store).rows(0, 1000)
    with torch.no_grad():
        sae.input_scale.fill_(640**0.5 / float(x.norm(dim=1).mean()))
        sae.b_dec.copy_((x * sae.input_scale).mean(0))
    sae_dir = sae.save(tmp_path / "sae")
    db = analyze(AnalyzeConfig(sae=str(sae_dir), out=str(tmp_path / "f.db"), activations=str(small_store),
                               tokens=1000, map="none", top_k=5, window=12), model=gemma, progress=False).path
    cmd = _cli("probe", str(db), "--category", "sycophancy", "--permutations", "200")
    start = time.perf_counter()
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr
    full = time.perf_counter() - start
    rng = random.Random(1)
    for i in range(3):
        _killed_at(cmd, full * (i + rng.random()) / 3)
        with FeatureStore.open(db, full_check=True) as store:
            assert store.d_sae == 64
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
