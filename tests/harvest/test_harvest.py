"""Harvest: the activation store's content, exact token counts, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from featurescope.activations import ActivationStore, open_source
from featurescope.errors import FeaturescopeError
from featurescope.harvest import HarvestConfig, harvest


def _all(store: ActivationStore) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shards = [store.read_shard(i) for i in range(len(store.shards))]
    return (torch.cat([s.acts for s in shards]), torch.cat([s.tokens for s in shards]),
            torch.cat([s.mask for s in shards]))


def test_store_holds_exact_rows_and_the_model_activations(small_store, gemma):
    store = ActivationStore(small_store)
    info = store.info
    assert (info.model, info.layer, info.d_model, info.dtype, info.ctx_len) == ("default", 9, 640, "bfloat16", 128)
    assert info.n_rows == 3000 and info.complete
    assert len(store.shards) > 1
    acts, tokens, mask = _all(store)
    assert acts.dtype == torch.bfloat16 and acts.shape == (3000, 640)
    assert (tokens[:, 0] == 2).all() and not mask[:, 0].any()  # BOS kept in tokens, out of the training rows
    assert int(mask.sum()) == 3000
    resid = gemma.residual(tokens[:3].long(), 9)
    torch.testing.assert_close(acts[: int(mask[:3].sum())].float(), resid[mask[:3]], rtol=1e-2, atol=1.0)
    norms = resid.float().norm(dim=-1)[:, 1:]  # massive activations (norm > 4x the median) are not rows either
    assert (~mask[:3, 1:] == (norms > 4 * norms.median())).all()
    m = store.manifest
    massive = int((~mask[:-1, 1:]).sum())  # the last context may stop early
    assert m["stats"]["excluded_positions"] >= len(tokens) + massive and m["max_norm_ratio"] == 4.0
    bos_norm = m["stats"]["excluded_sum_norm"] / m["stats"]["excluded_positions"]
    assert bos_norm > 5 * m["stats"]["sum_norm"] / m["stats"]["rows"]


def test_batches_cover_every_row_once_and_resume_mid_epoch(small_store):
    store = open_source(small_store)
    store.buffer_rows = 1200  # a few shards at a time
    assert max(sum(store.chunk_rows()[i] for i in g) for g in store._groups(0, 0, True)) <= 1200 + 508
    batches = list(store.batches(256, seed=1))
    rows = torch.cat(batches)
    assert rows.shape == (3000, 640)
    ordered = store.rows(0, 3000)
    assert not torch.equal(rows, ordered)
    assert torch.equal(rows.sum(0), ordered.sum(0)) or torch.allclose(rows.sum(0), ordered.sum(0), rtol=1e-5)
    tail = list(store.batches(256, seed=1, start_batch=5))
    assert len(tail) == len(batches) - 5 and all(torch.equal(a, b) for a, b in zip(batches[5:], tail, strict=True))


def _harvest_cmd(out, tokens: int) -> list[str]:
    return [sys.executable, "-m", "featurescope", "-q", "harvest", "--out", str(out), "--tokens", str(tokens),
            "--shard-contexts", "2", "--layer", "9", "--corpus", "wiki-en"]


def test_resume_after_sigkill_gives_the_uninterrupted_store(tmp_path, gemma):
    tokens = 4000  # 16 shards: the run is killed after 3
    ref = tmp_path / "ref"
    harvest(HarvestConfig(out=str(ref), tokens=tokens, shard_contexts=2, layer=9), model=gemma, progress=False)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_harvest_cmd(out, tokens), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads((out / "manifest.json").read_text())["shards"]) >= 3:
                break
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "harvest exited early"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"], "the run finished before it could be killed"
    shutil.copy(out / "shard-00000.safetensors", out / "shard-09999.safetensors")  # ours, never recorded
    (out / "shard-09998.safetensors").write_bytes(b"user")  # a user's file of the same name pattern: kept
    done = subprocess.run(_harvest_cmd(out, tokens), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not (out / "shard-09999.safetensors").exists()
    assert (out / "shard-09998.safetensors").read_bytes() == b"user"
    a, b = ActivationStore(ref), ActivationStore(out)
    assert a.n_rows == b.n_rows == tokens
    for x, y in zip(_all(a), _all(b), strict=True):
        assert torch.equal(x, y)


def test_rerun_extends_to_a_larger_budget(tmp_path, gemma):
    ref = tmp_path / "ref"
    harvest(HarvestConfig(out=str(ref), tokens=1500, shard_contexts=4, layer=9), model=gemma, progress=False)
    grown = tmp_path / "grown"
    harvest(HarvestConfig(out=str(grown), tokens=700, shard_contexts=4, layer=9), model=gemma, progress=False)
    again = harvest(HarvestConfig(out=str(grown), tokens=700, shard_contexts=4, layer=9), model=gemma, progress=False)
    assert again.new_rows == 0 and again.complete
    harvest(HarvestConfig(out=str(grown), tokens=1500, shard_contexts=4, layer=9), model=gemma, progress=False)
    for x, y in zip(_all(ActivationStore(ref)), _all(ActivationStore(grown)), strict=True):
        assert torch.equal(x, y)


def test_bad_harvest_input(tmp_path, gemma, small_store):
    with pytest.raises(FeaturescopeError, match="`tokens` must be positive") as e:
        harvest(HarvestConfig(out=str(tmp_path / "a"), tokens=0), model=gemma)
    assert e.value.settings == ("tokens",)  # the CLI says --tokens
    with pytest.raises(FeaturescopeError, match="out of range"):
        harvest(HarvestConfig(out=str(tmp_path / "a"), tokens=10, layer=18), model=gemma)
    with pytest.raises(FeaturescopeError, match="other settings"):
        harvest(HarvestConfig(out=str(small_store), tokens=3000, layer=5, shard_contexts=4), model=gemma)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(FeaturescopeError, match="no text"):
        harvest(HarvestConfig(out=str(tmp_path / "b"), tokens=10, corpus=str(empty)), model=gemma)


def test_corrupt_and_truncated_shards_are_reported(tmp_path, small_store):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_store, copy)
    shard = copy / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(FeaturescopeError, match="truncated"):
        ActivationStore(copy)
    shard.write_bytes(b"\xff" * len(data))
    store = ActivationStore(copy)
    with pytest.raises(FeaturescopeError, match="corrupt shard"):
        store.load_chunk(1)
    os.remove(copy / "shard-00000.safetensors")
    with pytest.raises(FeaturescopeError, match="missing"):
        ActivationStore(copy)
