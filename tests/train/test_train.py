"""Training: outputs on disk, exact resume (also after SIGKILL), config clashes and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import featurescope.train.loop as train_module
from featurescope.activations import TensorSource
from featurescope.atomic import read_json
from featurescope.cli import flag_wording
from featurescope.errors import FeaturescopeError
from featurescope.synthetic import make_synthetic
from featurescope.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def acts() -> torch.Tensor:
    return make_synthetic(12_000, 16, 32, mean_active=3, seed=2).data * 40.0


def small(folder: Path, /, **kw) -> TrainConfig:
    """A tiny run into `out` (keywords override, `out` included)."""
    base = {"out": str(folder), "arch": "topk", "features": 64, "k": 4, "batch_size": 256, "epochs": 2,
            "checkpoint_seconds": 0.0}
    return TrainConfig(**{**base, **kw})


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a / "sae.safetensors")), load_file(str(b / "sae.safetensors"))
    assert set(ta) == set(tb)
    for name in ta:
        assert torch.allclose(ta[name], tb[name], rtol=1e-6, atol=1e-7), name


class Interrupting(TensorSource):
    """A source whose batches raise KeyboardInterrupt after `after` batches in total."""

    def __init__(self, data: torch.Tensor, after: int) -> None:
        super().__init__(data)
        self.after, self.served = after, 0

    def batches(self, batch_size: int, **kw) -> Iterator[torch.Tensor]:
        for b in super().batches(batch_size, **kw):
            if self.served >= self.after:
                raise KeyboardInterrupt
            self.served += 1
            yield b


def test_outputs_on_disk(acts, tmp_path):
    src = TensorSource(acts, model="gemma-3-270m", layer=9)
    result = train(small(tmp_path / "run"), source=src, progress=False)
    out = tmp_path / "run"
    assert result.path == out and result.steps == 2 * 47
    assert {"fvu", "l0", "dead_fraction", "mse"} <= set(result.metrics) and result.metrics["fvu"] < 0.6
    cfg = read_json(out / "cfg.json")
    assert cfg["format"] == "featurescope.sae" and cfg["architecture"] == "topk" and cfg["k"] == 4
    assert cfg["model"] == "gemma-3-270m" and cfg["layer"] == 9 and cfg["d_in"] == 16 and cfg["d_sae"] == 64
    summary = read_json(out / "training_summary.json")
    assert summary["steps"] == 94 and summary["tokens"] == 12_000 * 2 and summary["metrics"] == result.metrics
    ckpt = read_json(out / "checkpoint" / "checkpoint.json")
    assert ckpt["step"] == 94 and ckpt["config"]["arch"] == "topk"
    files = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert files == ["checkpoint.json", "state-00000094.safetensors"]
    state = load_file(str(out / "checkpoint" / files[1]))
    expected = {"sae/W_dec", "adam/W_dec/exp_avg", "adam/W_dec/exp_avg_sq", "trainer/since_fired", "trainer/rng"}
    assert expected <= set(state)
    assert not [p for p in out.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".bin", ".pickle")]
    # a rerun of a finished run trains nothing and returns the same SAE
    t = time.perf_counter()
    again = train(small(tmp_path / "run"), source=src, progress=False)
    assert again.steps == 94 and time.perf_counter() - t < 5
    assert torch.equal(again.sae.W_dec, result.sae.W_dec)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "batchtopk"])
def test_interrupted_run_resumes_to_the_same_weights(acts, tmp_path, monkeypatch, arch):
    resampled: list[int] = []
    real = train_module.resample_dead

    def counting(*args, **kwargs):
        n = real(*args, **kwargs)
        resampled.append(n)
        return n

    monkeypatch.setattr(train_module, "resample_dead", counting)
    kw = {"arch": arch, "checkpoint_every": 35, "dead_tokens": 2048}
    if arch == "relu":
        kw["sparsity_coefficient"] = 30.0  # kills features: resampled at steps 32 and 40, around the cut at 35
    with pytest.raises(KeyboardInterrupt):
        train(small(tmp_path / "cut", **kw), source=Interrupting(acts, after=36), progress=False)
    assert read_json(tmp_path / "cut" / "checkpoint" / "checkpoint.json")["step"] == 35
    resumed = train(small(tmp_path / "cut", **kw), source=TensorSource(acts), progress=False)
    whole = train(small(tmp_path / "whole", **kw), source=TensorSource(acts), progress=False)
    assert resumed.steps == whole.steps == 94
    assert_same_weights(tmp_path / "cut", tmp_path / "whole")
    if arch == "relu":
        assert sum(resampled) > 0


def test_resume_after_sigkill_matches_an_uninterrupted_run(acts, tmp_path):
    npy = tmp_path / "acts.npy"
    np.save(npy, acts.numpy())
    cfg = {"activations": str(npy), "out": str(tmp_path / "killed"), "arch": "topk", "features": 64, "k": 4,
           "batch_size": 128, "epochs": 6, "checkpoint_every": 5, "checkpoint_seconds": 0.0}
    code = ("import json, sys\nfrom featurescope.train import TrainConfig, train\n"
            "train(TrainConfig(**json.loads(sys.argv[1])), progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = tmp_path / "killed" / "checkpoint" / "checkpoint.json"
    deadline = time.monotonic() + 120
    while not manifest.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "trainer exited"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    total = 6 * 90  # 11,400 training rows: the .npy's last 12,000 / 20 rows are held out
    killed_at = read_json(manifest)["step"]
    assert 0 < killed_at < total
    assert not (tmp_path / "killed" / "sae.safetensors").exists()
    resumed = train(TrainConfig(**cfg), progress=False)
    whole = train(TrainConfig(**{**cfg, "out": str(tmp_path / "whole")}), progress=False)
    assert resumed.steps == whole.steps == total
    assert_same_weights(tmp_path / "killed", tmp_path / "whole")


def test_changed_config_in_an_existing_out_is_refused(acts, tmp_path):
    src = TensorSource(acts)
    train(small(tmp_path / "run", epochs=1), source=src, progress=False)
    with pytest.raises(FeaturescopeError, match=r"different configuration \(lr differ\).*`overwrite`") as e:
        train(small(tmp_path / "run", epochs=1, lr=1e-2), source=src, progress=False)
    assert flag_wording(e.value).endswith("use a new --out, or --overwrite to discard it")
    # fields that do not change the result may differ, and a default may be spelled out
    train(small(tmp_path / "run", epochs=1, log_every=3, checkpoint_every=5), source=src, progress=False)
    train(small(tmp_path / "run", epochs=1, lr=8e-3, k_aux=8), source=src, progress=False)
    redone = train(small(tmp_path / "run", epochs=1, lr=1e-2, overwrite=True), source=src, progress=False)
    assert read_json(tmp_path / "run" / "train_config.json")["lr"] == 1e-2 and redone.steps == 47
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FeaturescopeError, match="not empty"):
        train(small(tmp_path / "other"), source=src, progress=False)


def _npy(tmp_path: Path, array: np.ndarray) -> str:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    return str(path)


BAD = {
    "epochs 0": lambda p: {"epochs": 0},
    "features 0": lambda p: {"features": 0},
    "k 0": lambda p: {"k": 0},
    "k above features": lambda p: {"k": 65},
    "batch size 0": lambda p: {"batch_size": 0},
    "unknown arch": lambda p: {"arch": "gated"},
    "negative lr": lambda p: {"lr": -1.0},
    "no out": lambda p: {"out": ""},
    "no activations": lambda p: {"activations": ""},
    "missing file": lambda p: {"activations": str(p / "nope.npy")},
    "rank-3 npy": lambda p: {"activations": _npy(p, np.zeros((4, 5, 6), np.float32))},
    "empty npy": lambda p: {"activations": _npy(p, np.zeros((0, 16), np.float32))},
    "integer npy": lambda p: {"activations": _npy(p, np.ones((100, 16), np.int64))},
    "nan rows": lambda p: {"activations": _npy(p, np.full((100, 16), np.nan, np.float32))},
    "zero rows": lambda p: {"activations": _npy(p, np.zeros((100, 16), np.float32))},
    "max rows 0": lambda p: {"max_rows": 0},
    "bad select dtype": lambda p: {"select_dtype": "int8"},
    "warmup above 1": lambda p: {"warmup": 2.0},
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_featurescope_error(acts, tmp_path, case):
    npy = tmp_path / "good.npy"
    np.save(npy, acts[:1000].numpy())
    kw = {"activations": str(npy), **BAD[case](tmp_path)}
    with pytest.raises(FeaturescopeError):
        train(small(tmp_path / "out", **kw), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_featurescope_error(acts, tmp_path):
    with pytest.raises(FeaturescopeError, match="CUDA"):
        train(small(tmp_path / "out", device="cuda"), source=TensorSource(acts), progress=False)


def test_max_rows_limits_the_data(acts, tmp_path):
    result = train(small(tmp_path / "out", max_rows=1000, epochs=1), source=TensorSource(acts), progress=False)
    assert result.steps == 4
    assert read_json(tmp_path / "out" / "train_config.json")["data"]["rows"] == 1000
