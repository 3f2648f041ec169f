"""Distributed training on 2 ranks (gloo, CPU) against one process: data parallel, feature sharded, global
top-k selections with ties, resume on another world size, the saved files, `--distributed` and its errors.

Every 2-rank job runs in one `run_ranks` group (module fixture `runs`); the single-process references run
in this process with one thread, as each rank does. Equality is up to float summation order: all-reduced
partial sums add in another order than one process does, which moves the weights by ~1e-7 over a run, and
by up to ~1e-5 in a freshly resampled feature (its direction is a normalised residual and its Adam moments
restart, so rounding-sized gradients take full-size steps). A different top-k choice, a missing gradient term
or a different resampling draw moves the weights by about the learning rate (~1e-2): TOL lies between.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import run_cli
from distributed_helpers import Interrupting, one_thread, run_ranks, selection_scores
from featurescope.activations import TensorSource
from featurescope.cli import main
from featurescope.errors import FeaturescopeError
from featurescope.sae import SAE, SAEConfig
from featurescope.sae.kernels import topk_flat, topk_rows
from featurescope.sae.parallel import Parallel, RowTop
from featurescope.train import TrainConfig, checkpoint, train

TOL = 1e-4
ROWS, D_IN, BATCH = 2048, 16, 256  # 8 steps
ARCHS = {  # arch: (settings of the data-parallel runs, 32 features; of the feature-sharded runs, 33 features)
    "topk": ({"features": 32, "k": 4}, {"features": 33, "k": 20}),  # k 20 > the 16 features of rank 1
    "batchtopk": ({"features": 32, "k": 4}, {"features": 33, "k": 4}),
    "relu": ({"features": 32}, {"features": 33}),
    "jumprelu": ({"features": 32}, {"features": 33}),
}
RESUMES = {  # name: (arch, sharded settings?, where it starts -> where it ends)
    "ddp_to_one": ("relu", False),
    "fs_to_one": ("batchtopk", True),
    "one_to_ddp": ("batchtopk", False),
    "one_to_fs": ("jumprelu", True),
}
STOP = 3
"""Interrupted runs stop right after the checkpoint at this step."""
SELECTIONS = [("row_top", "cols", 3), ("row_top", "cols", 12), ("flat_top", "rows", 50),
              ("flat_top", "rows", 401), ("flat_top", "cols", 50), ("flat_top", "cols", 401)]
"""(kind, split, k): row_top's k 12 exceeds the 8 columns of rank 1."""


def _write_data(path: Path) -> None:
    """Rows near a 3-dimensional cone, so that features die: AuxK and resampling both run."""
    g = np.random.default_rng(1)
    x = np.abs(g.standard_normal((ROWS, 3))) @ g.standard_normal((3, D_IN)) + 0.05 * g.standard_normal((ROWS, D_IN))
    np.save(path, x.astype(np.float32))


def _cfg(data: Path, arch: str, settings: dict[str, Any], out: Path, **extra: Any) -> dict[str, Any]:
    return dict(activations=str(data), out=str(out), arch=arch, batch_size=BATCH, seed=3, dead_tokens=BATCH,
                checkpoint_seconds=0.0, **settings, **extra)


def _interrupted_here(cfg: dict[str, Any]) -> None:
    """One process, stopped right after the checkpoint at step STOP."""
    with contextlib.suppress(KeyboardInterrupt):
        train(TrainConfig(**cfg, checkpoint_every=STOP), source=Interrupting(cfg["activations"], STOP), progress=False)


def _checkpoint_state(out: Path) -> dict[str, Any]:
    info = json.loads((out / "checkpoint" / "checkpoint.json").read_text())
    return {"step": info["step"], "files": sorted(p.name for p in (out / "checkpoint").iterdir()),
            "sae_written": (out / "sae.safetensors").exists()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Every run of this module: references in this process, all 2-rank jobs in one group, then resumes."""
    root = tmp_path_factory.mktemp("dist_train")
    data = root / "x.npy"
    _write_data(data)
    ref = {(arch, sharded): root / f"ref_{arch}_{int(sharded)}" for arch in ARCHS for sharded in (False, True)}
    resume = {name: root / name for name in RESUMES}
    before: dict[str, dict[str, Any]] = {}
    with one_thread():
        for (arch, sharded), out in ref.items():
            train(TrainConfig(**_cfg(data, arch, ARCHS[arch][sharded], out)), progress=False)
        for name in ("one_to_ddp", "one_to_fs"):
            arch, sharded = RESUMES[name]
            _interrupted_here(_cfg(data, arch, ARCHS[arch][sharded], resume[name]))
            before[name] = _checkpoint_state(resume[name])
    jobs: list[dict[str, Any]] = []
    for arch, (ddp, fs) in ARCHS.items():
        jobs.append({"kind": "train", "cfg": _cfg(data, arch, ddp, root / f"ddp_{arch}")})
        jobs.append({"kind": "train", "cfg": _cfg(data, arch, fs, root / f"fs_{arch}", shard_features=True)})
    for name, (arch, sharded) in RESUMES.items():
        cfg = _cfg(data, arch, ARCHS[arch][sharded], resume[name], shard_features=sharded)
        if name.startswith("one_to"):
            jobs.append({"kind": "train", "cfg": cfg})
        else:
            jobs.append({"kind": "train", "cfg": {**cfg, "checkpoint_every": STOP}, "interrupt_after": STOP})
    for kind, split, k in SELECTIONS:
        jobs.append({"kind": kind, "split": split, "k": k, "out": str(root / f"{kind}_{split}_{k}.json")})
    error = root / "error.txt"
    jobs.append({"kind": "train", "cfg": _cfg(data, "topk", {"features": 1, "k": 1}, root / "too_few",
                                               shard_features=True), "error_out": str(error)})
    jobs.append({"kind": "on_main_error", "out": str(root / "on_main")})
    run_ranks(jobs, workdir=root)
    with one_thread():
        for name in ("ddp_to_one", "fs_to_one"):
            before[name] = _checkpoint_state(resume[name])
            ckpt = resume[name] / "checkpoint"  # what a kill during the next save would leave behind
            (ckpt / ".state-00000006.safetensors.x1y2.tmp").write_bytes(b"half")
            (ckpt / "state-00000006.safetensors").write_bytes(b"orphan")
            arch, sharded = RESUMES[name]
            train(TrainConfig(**_cfg(data, arch, ARCHS[arch][sharded], resume[name])), progress=False)
    return SimpleNamespace(root=root, data=data, ref=ref, resume=resume, before=before, error=error)


def assert_same_sae(a_dir: Path, b_dir: Path) -> None:
    a, b = SAE.load(a_dir), SAE.load(b_dir)
    assert a.cfg.to_json() == b.cfg.to_json()
    ta, tb = a.tensors(), b.tensors()
    assert ta.keys() == tb.keys()
    for name, t in ta.items():
        assert t.shape == tb[name].shape, name
        diff = float((t.double() - tb[name].double()).abs().max()) if t.numel() else 0.0
        assert diff <= TOL, f"{name}: max |difference| {diff:.3g}"


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "training_summary.json").read_text())


def assert_same_run(a_dir: Path, b_dir: Path) -> None:
    assert_same_sae(a_dir, b_dir)
    a, b = summary(a_dir), summary(b_dir)
    assert (a["steps"], a["tokens"], a["config"]) == (b["steps"], b["tokens"], b["config"])
    for key in ("fvu", "l0", "mse", "dead_fraction"):
        assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("arch", list(ARCHS))
def test_data_parallel_equals_one_process(runs, arch):
    out = runs.root / f"ddp_{arch}"
    assert_same_run(out, runs.ref[arch, False])
    assert (summary(out)["world_size"], summary(out)["layout"]) == (2, "DataParallelLayout")


@pytest.mark.parametrize("arch", list(ARCHS))
def test_feature_sharded_equals_one_process(runs, arch):
    """33 features: ranks of 17 and 16; TopK's k 20 exceeds rank 1's features."""
    out = runs.root / f"fs_{arch}"
    assert_same_run(out, runs.ref[arch, True])
    assert (summary(out)["world_size"], summary(out)["layout"]) == (2, "FeatureShardLayout")


def _lowest_index_top(scores: torch.Tensor, k: int, dim: int | None) -> torch.Tensor:
    """The reference rule: largest first, ties to the lowest index (a stable sort); sorted flat indices."""
    if dim is None:
        return torch.sort(scores.reshape(-1), descending=True, stable=True).indices[:k].sort().values
    cols = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    return (torch.arange(scores.shape[0])[:, None] * scores.shape[1] + cols).reshape(-1).sort().values


@pytest.mark.parametrize(("kind", "split", "k"), SELECTIONS)
def test_global_selection_equals_one_process_with_ties(runs, kind, split, k):
    scores = selection_scores()
    expected = _lowest_index_top(scores, k, dim=-1 if kind == "row_top" else None)
    kth = scores.reshape(-1)[expected].min() if kind == "flat_top" else None
    if kth is not None:  # the K-th value also occurs outside the selection: the tie rule decides
        assert int((scores == kth).sum()) > int((scores.reshape(-1)[expected] == kth).sum())
    else:
        row_kth = scores.reshape(-1)[expected].view(-1, k).min(-1, keepdim=True).values
        assert bool(((scores >= row_kth).sum(-1) > k).any())
    one = topk_rows(scores, k) if kind == "row_top" else topk_flat(scores, k)
    if kind == "row_top":
        one = (torch.arange(scores.shape[0])[:, None] * scores.shape[1] + one).reshape(-1)
    assert torch.equal(one.sort().values, expected)
    chosen = json.loads((runs.root / f"{kind}_{split}_{k}.json").read_text())
    assert chosen == expected.tolist()


def test_selection_kernels_break_ties_by_lowest_index_in_bfloat16():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 4096, generator=g).bfloat16()  # two-stage paths, frequent bfloat16 ties
    for k in (1, 32):
        got = topk_rows(scores, k)
        expected = _lowest_index_top(scores.float(), k, dim=-1)
        assert torch.equal((torch.arange(64)[:, None] * 4096 + got).reshape(-1).sort().values, expected)
    for K in (64, 64 * 32):
        assert torch.equal(topk_flat(scores, K).sort().values, _lowest_index_top(scores.float(), K, dim=None))


class _ShardWithoutDead(Parallel):
    """AuxK's view of a feature shard with no dead features while the other shards hold 100."""

    features_split = True

    def features_total(self, t: torch.Tensor) -> torch.Tensor:
        return t + 100

    def row_top(self, scores: torch.Tensor, k: int) -> RowTop:
        n = scores.shape[0]
        return RowTop(torch.zeros(n, k, dtype=torch.int64), torch.zeros(n, k, dtype=torch.bool))


def test_auxk_on_a_shard_without_dead_features():
    sae = SAE.create(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2), seed=0)
    sae.parallel = _ShardWithoutDead()
    residual = torch.randn(10, 8)
    auxk = sae._auxk_loss(torch.randn(10, 8), residual, torch.zeros(16, dtype=torch.bool))
    assert auxk is not None and float(auxk.detach()) == pytest.approx(1.0)  # ê = 0 here: the other shards add theirs
    auxk.backward()


@pytest.mark.parametrize("name", list(RESUMES))
def test_resume_on_another_world_size_ends_equal(runs, name):
    """2 ranks -> 1 process and 1 process -> 2 ranks, data parallel and feature sharded."""
    arch, sharded = RESUMES[name]
    out = runs.resume[name]
    before = runs.before[name]
    assert before["step"] == STOP and not before["sae_written"]
    assert before["files"] == ["checkpoint.json", f"state-{STOP:08d}.safetensors"]
    assert_same_run(out, runs.ref[arch, sharded])
    assert summary(out)["world_size"] == (1 if name.endswith("one") else 2)
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["checkpoint.json", "state-00000008.safetensors"]


def test_sharded_run_writes_one_ordinary_sae_and_checkpoint(runs):
    out = runs.root / "fs_jumprelu"
    assert sorted(p.name for p in out.iterdir()) == [
        "cfg.json", "checkpoint", "sae.safetensors", "train_config.json", "training_summary.json"]
    sae = SAE.load(out)
    assert (sae.cfg.d_sae, sae.W_dec.shape, sae.log_threshold.shape) == (33, (33, D_IN), (33,))
    with safe_open(str(out / "sae.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "featurescope.sae"}
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["checkpoint.json", "state-00000008.safetensors"]
    state = checkpoint.load(out / "checkpoint")
    assert state is not None and state.step == 8
    for name in ("sae/W_dec", "sae/log_threshold", "adam/W_dec/exp_avg", "adam/log_threshold/exp_avg_sq",
                 "trainer/since_fired"):
        assert state.tensors[name].shape[0] == 33, name
    assert torch.equal(state.tensors["sae/W_dec"], sae.W_dec.detach())


def test_error_inside_the_group_is_one_message_on_every_rank(runs):
    assert runs.error.read_text() == "`shard_features` needs at least one feature per rank: 1 features on 2 ranks"


def test_any_error_on_rank_0_reaches_every_rank(runs):
    """An OSError in rank 0's part (a full disk, say) is raised there and told to the others at once."""
    caught = [(runs.root / f"on_main.{rank}").read_text() for rank in (0, 1)]
    assert caught == ["OSError: No space left on device",
                      "FeaturescopeError: rank 0 failed: OSError: No space left on device"]


def test_cli_distributed_runs_torchrun_end_to_end(runs, tmp_path):
    """`featurescope train --distributed 2` through the real CLI equals the in-process sharded reference."""
    out = tmp_path / "cli"
    settings = ARCHS["topk"][1]
    proc = run_cli("-q", "train", "--activations", str(runs.data), "--out", str(out), "--arch", "topk",
                   "--features", str(settings["features"]), "--k", str(settings["k"]), "--batch-size", str(BATCH),
                   "--seed", "3", "--dead-tokens", str(BATCH), "--checkpoint-seconds", "0", "--distributed", "2",
                   "--shard-features", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 steps" in proc.stdout
    assert (summary(out)["world_size"], summary(out)["layout"]) == (2, "FeatureShardLayout")
    assert_same_run(out, runs.ref["topk", True])


def test_user_mistakes_are_one_line_errors(runs, tmp_path, capsys):
    proc = run_cli("train", "--activations", str(runs.data), "--out", str(tmp_path / "a"), "--distributed", "2",
                   "--shard-features", "--features", "1", "--k", "1", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "featurescope: error: --shard-features needs at least one feature per rank: 1 features on 2 ranks"]
    assert not (tmp_path / "a").exists()
    cases = [
        (["--activations", str(tmp_path / "missing.npy"), "--distributed", "2"], "missing.npy: no such file"),
        (["--activations", str(runs.data), "--distributed", "2", "--dist-backend", "nccl"], "needs CUDA GPUs"),
        (["--activations", str(runs.data), "--distributed", "-1"], "--distributed must not be negative"),
    ]
    for args, message in cases:
        assert main(["train", "--out", str(tmp_path / "b"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("featurescope: error: ") and message in err[0], err
    assert not (tmp_path / "b").exists()
    source = TensorSource(torch.randn(64, 4))
    with pytest.raises(FeaturescopeError, match="give `activations` \\(a path\\), not a source"):
        train(TrainConfig(out=str(tmp_path / "c"), distributed=2), source=source)
