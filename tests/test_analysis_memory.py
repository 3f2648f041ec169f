"""Peak memory of `analyze` does not grow with the number of tokens (measured in fresh processes)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from featurescope.activations import MANIFEST, STORE_FORMAT, STORE_VERSION, shard_name
from featurescope.atomic import write_json, write_safetensors
from featurescope.sae import SAE, SAEConfig

CTX, SHARD_CONTEXTS, D = 128, 64, 640

CHILD = """
import sys
from featurescope.analysis import AnalyzeConfig, analyze
from featurescope.models import load_model
sae, store, out, tokens = sys.argv[1:5]
model = load_model("default", device="cpu")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) so that loading the model does not mask it
    f.write("5")
analyze(AnalyzeConfig(sae=sae, activations=store, out=out, tokens=int(tokens), map="none", checkpoint_seconds=0),
        model=model, progress=False)
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def _synthetic_store(path, contexts: int) -> None:
    """An activation store in the documented format: random bfloat16 rows, random tokens, BOS not a row."""
    g = torch.Generator().manual_seed(0)
    shards = []
    path.mkdir()
    for i, s in enumerate(range(0, contexts, SHARD_CONTEXTS)):
        n = min(SHARD_CONTEXTS, contexts - s)
        tokens = torch.randint(1000, 50000, (n, CTX), generator=g, dtype=torch.int32)
        tokens[:, 0] = 2
        mask = torch.ones(n, CTX, dtype=torch.uint8)
        mask[:, 0] = 0
        acts = (torch.randn(n * (CTX - 1), D, generator=g) * 100).to(torch.bfloat16)
        write_safetensors(path / shard_name(i), {"acts": acts, "tokens": tokens, "mask": mask})
        shards.append({"file": shard_name(i), "rows": len(acts), "contexts": n, "partial": False,
                       "bytes": (path / shard_name(i)).stat().st_size})
    write_json(path / MANIFEST, {"format": STORE_FORMAT, "version": STORE_VERSION, "model": "default", "layer": 9,
                                 "d_model": D, "dtype": "bfloat16", "ctx_len": CTX, "corpus": "synthetic",
                                 "complete": True, "shards": shards})


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_peak_memory_is_flat_when_the_tokens_double(tmp_path):
    _synthetic_store(tmp_path / "acts", 200)  # 25,400 rows
    sae = SAE.create(SAEConfig(d_in=D, d_sae=1024, architecture="topk", k=16, model="default", layer=9))
    with torch.no_grad():
        sae.input_scale.fill_(D**0.5 / (100 * D**0.5))
    sae.save(tmp_path / "sae")
    peak = {}
    for tokens in (12_700, 25_400):
        result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "sae"), str(tmp_path / "acts"),
                                 str(tmp_path / f"{tokens}.db"), str(tokens)], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        peak[tokens] = int(result.stdout.split()[-1]) / 1024  # MiB of peak resident memory during `analyze`
    # keeping the extra 12.7k tokens' activations would add 31 MiB per pass (float32), their dense codes 50 MiB
    assert peak[25_400] - peak[12_700] < 20, peak
