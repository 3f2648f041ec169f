"""Peak memory of `analyze` does not grow with the number of tokens (measured in fresh processes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from featurescope.sae import SAE, SAEConfig
from featurescope.synthetic import random_store

CTX, SHARD_CONTEXTS, D = 128, 64, 640  # random_store's defaults

CHILD = """
import sys
import torch
from featurescope.analysis import AnalyzeConfig, analyze
from featurescope.models import load_model
torch.set_num_threads(1)  # one thread: no per-thread arenas or scratch buffers whose timing varies
sae, store, out, tokens = sys.argv[1:5]
model = load_model("default", device="cpu")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) so that loading the model does not mask it
    f.write("5")
analyze(AnalyzeConfig(sae=sae, activations=store, out=out, tokens=int(tokens), map="none", checkpoint_seconds=0),
        model=model, progress=False)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""
# glibc's allocator raises its mmap threshold as large blocks are freed and then serves them from a heap that
# fragments by timing; a fixed threshold and one arena make the peak track the live allocations instead.
CHILD_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
             "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL, LARGE = 6_350, 25_400


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_peak_memory_is_flat_when_the_tokens_double(tmp_path):
    random_store(tmp_path / "acts", 200, ctx_len=CTX, d=D, shard_contexts=SHARD_CONTEXTS)  # 25,400 rows
    sae = SAE.create(SAEConfig(d_in=D, d_sae=1024, architecture="topk", k=16, model="default", layer=9))
    with torch.no_grad():
        sae.input_scale.fill_(D**0.5 / (100 * D**0.5))
    sae.save(tmp_path / "sae")
    def start(tokens: int, run: int) -> subprocess.Popen:
        """A fresh `analyze` (its own output) in a fresh process; it prints its peak resident memory (KiB)."""
        return subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "sae"), str(tmp_path / "acts"),
                                 str(tmp_path / f"{tokens}_{run}.db"), str(tokens)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **CHILD_ENV})

    def peak_mib(child: subprocess.Popen) -> float:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err
        return int(out.split()[-1]) / 1024

    # the least of two runs of each size (a busy machine once added transient peak to one run); each child has
    # one thread, so a small and a large run side by side share the 2 cores (the peak is per process)
    peaks: dict[int, list[float]] = {SMALL: [], LARGE: []}
    for run in (0, 1):
        children = {tokens: start(tokens, run) for tokens in (SMALL, LARGE)}
        for tokens, child in children.items():
            peaks[tokens].append(peak_mib(child))
    peak = {tokens: min(values) for tokens, values in peaks.items()}
    # The bound is derived from what memory that grows with the tokens would cost, not from machine noise:
    # keeping the extra 19k tokens' activations (float32) would add 46 MiB per pass, their dense codes 74 MiB;
    # half of the smaller cost is the bound. Measured with these allocator settings on 2 busy cores: +2.0 and
    # +2.5 MiB from 6,350 to 25,400 tokens, identical runs within 0.5 MiB of each other.
    keep_cost = (LARGE - SMALL) * D * 4 / 2**20
    assert peak[LARGE] - peak[SMALL] < keep_cost / 2, (peak, keep_cost)
