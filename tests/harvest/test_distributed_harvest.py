"""Harvest on 2 ranks (gloo, CPU): the same store as 1 process, resumable on another world size, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from distributed_helpers import one_thread, run_ranks
from featurescope.activations import ActivationStore
from featurescope.harvest import HarvestConfig, harvest

SETTINGS = {"tokens": 2300, "shard_contexts": 2, "layer": 9, "batch_size": 2}


def _all(store: ActivationStore) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shards = [store.read_shard(i) for i in range(len(store.shards))]
    return (torch.cat([s.acts for s in shards]), torch.cat([s.tokens for s in shards]),
            torch.cat([s.mask for s in shards]))


def _assert_same_store(path, ref) -> None:
    a, b = ActivationStore(ref), ActivationStore(path)
    assert b.n_rows == a.n_rows == SETTINGS["tokens"] and b.info.complete
    assert b.shards == a.shards  # files, rows, contexts, bytes, partial flag, per-shard stats
    assert b.manifest["stats"] == pytest.approx(a.manifest["stats"])
    for x, y in zip(_all(a), _all(b), strict=True):
        assert torch.equal(x, y)


@pytest.fixture(scope="module")
def reference(gemma, tmp_path_factory):
    """A 1-process harvest of SETTINGS (one thread, like each rank)."""
    out = tmp_path_factory.mktemp("ref") / "acts"
    with one_thread():
        harvest(HarvestConfig(out=str(out), **SETTINGS), model=gemma, progress=False)
    assert len(ActivationStore(out).shards) >= 6 and ActivationStore(out).shards[-1]["partial"]
    return out


def test_two_ranks_write_the_one_process_store_and_a_crashed_run_resumes_on_one(tmp_path, reference, gemma):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    jobs = [
        {"kind": "harvest", "cfg": {"out": str(whole), **SETTINGS}},
        {"kind": "harvest", "cfg": {"out": str(crashed), **SETTINGS}, "crash_after": 2},
    ]
    with pytest.raises(Exception):  # noqa: B017 - rank 1 exits 1; rank 0 fails or is terminated
        run_ranks(jobs, workdir=tmp_path)
    _assert_same_store(whole, reference)

    partial = json.loads((crashed / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 2  # round 2 never recorded
    assert (crashed / "shard-00003.safetensors").exists()  # rank 1's unrecorded shard
    with one_thread():
        harvest(HarvestConfig(out=str(crashed), **SETTINGS), model=gemma, progress=False)
    _assert_same_store(crashed, reference)


# slow: two torchrun ranks extending a store (~36 s on a fresh clone); the two-rank store test stays in make test
@pytest.mark.slow
def test_cli_distributed_extends_a_one_process_store(tmp_path, reference, gemma):
    out = tmp_path / "grown"
    with one_thread():
        harvest(HarvestConfig(out=str(out), **{**SETTINGS, "tokens": 700}), model=gemma, progress=False)
    assert ActivationStore(out).shards[-1]["partial"]
    args = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    done = run_cli("-q", "harvest", "--out", str(out), *args, "--distributed", "2", timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{SETTINGS['tokens']} activation rows" in done.stdout and "(complete;" in done.stdout
    _assert_same_store(out, reference)
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["distributed"] == 0  # the ranks' own config: torchrun's ranks, not --distributed
