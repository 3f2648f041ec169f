"""Commands write only into folders that are theirs (by content), delete only files they wrote, and give
their files the user's umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from featurescope.activations import MANIFEST, STORE_FORMAT
from featurescope.atomic import write_json, write_safetensors
from featurescope.errors import FeaturescopeError
from featurescope.harvest.writer import HarvestConfig, begin_store, clear_store
from featurescope.sae import SAE
from featurescope.sae.config import SAEConfig
from featurescope.sae.io import export


def _sae() -> SAE:
    return SAE.create(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2), seed=0)


def _snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_overwrite_replaces_only_an_exported_sae(tmp_path):
    sae = _sae()
    out = tmp_path / "exp"
    export(sae, out, "saelens")
    export(sae, out, "sparsify", overwrite=True)  # an exported SAE: replaced
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "sae.safetensors"]
    (out / "notes.txt").write_text("mine")  # now it also holds a user's file: never deleted
    before = _snapshot(out)
    with pytest.raises(FeaturescopeError, match="not an exported SAE.*notes.txt"):
        export(sae, out, "saelens", overwrite=True)
    assert _snapshot(out) == before
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "sub" / "thesis.tex").write_text("years of work")
    with pytest.raises(FeaturescopeError, match="not an exported SAE"):
        export(sae, user, "saelens", overwrite=True)
    assert (user / "sub" / "thesis.tex").read_text() == "years of work"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no .tmp/.old left


def test_export_to_the_current_folder_is_one_line(tmp_path):
    sae_dir = tmp_path / "sae"
    _sae().save(sae_dir)
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    r = subprocess.run([sys.executable, "-m", "featurescope", "export", str(sae_dir), "--format", "saelens",
                        "--out", ".", "--overwrite"], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "current folder" in r.stderr, r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["sae", "work"]  # no ..xxxx.old/ left behind


def _fresh() -> dict:
    cfg = HarvestConfig(out="x")
    return {"format": STORE_FORMAT, "shards": [], "config": {}, **{k: getattr(cfg, k, None) for k in (
        "model", "layer", "corpus", "ctx_len", "dtype", "seed", "shard_contexts")}}


def test_harvest_never_clears_a_folder_it_does_not_own(tmp_path):
    cfg = HarvestConfig(out=str(tmp_path))
    lost = tmp_path / "lost-manifest"  # a store whose manifest is gone: its shards are kept, the run refused
    write_safetensors(lost / "shard-00000.safetensors", {"acts": torch.zeros(2, 2)}, {"format": STORE_FORMAT})
    with pytest.raises(FeaturescopeError, match="not empty and holds no activation store"):
        begin_store(cfg, lost, _fresh())
    assert (lost / "shard-00000.safetensors").exists()
    user = tmp_path / "user"
    user.mkdir()
    (user / "shard-00007.safetensors").write_bytes(b"my own file")
    with pytest.raises(FeaturescopeError, match="not empty"):
        begin_store(cfg, user, _fresh())
    assert (user / "shard-00007.safetensors").read_bytes() == b"my own file"
    foreign = tmp_path / "foreign"  # --overwrite never replaces another program's manifest.json
    write_json(foreign / MANIFEST, {"name": "my web app"})
    with pytest.raises(FeaturescopeError, match="not an activation store"):
        clear_store(HarvestConfig(out=str(foreign), overwrite=True), foreign)
    assert (foreign / MANIFEST).exists()


def test_harvest_overwrite_deletes_only_the_store(tmp_path):
    out = tmp_path / "store"
    manifest = begin_store(HarvestConfig(out=str(out)), out, _fresh())
    assert (out / MANIFEST).is_file()  # written before the first shard: a killed run's folder is recognisable
    write_safetensors(out / "shard-00000.safetensors", {"acts": torch.zeros(2, 2)}, {"format": STORE_FORMAT})
    manifest["shards"].append({"file": "shard-00000.safetensors"})
    write_json(out / MANIFEST, manifest)
    (out / "README.txt").write_text("notes")
    with pytest.raises(FeaturescopeError, match="README.txt"):
        clear_store(HarvestConfig(out=str(out), overwrite=True), out)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", MANIFEST, "shard-00000.safetensors"]
    (out / "README.txt").unlink()
    clear_store(HarvestConfig(out=str(out), overwrite=True), out)
    assert list(out.iterdir()) == []


def test_output_files_and_folders_take_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        export(_sae(), tmp_path / "exp", "saelens")
        write_safetensors(tmp_path / "t.safetensors", {"x": torch.zeros(1)})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "exp", *(tmp_path / "exp").iterdir(),
                                                              tmp_path / "t.safetensors"]}
    assert modes == {"exp": 0o755, "cfg.json": 0o644, "sae_weights.safetensors": 0o644, "t.safetensors": 0o644}


def test_image_harvest_clears_only_its_own_store(tmp_path):
    from featurescope.harvest.images import _clean

    user = tmp_path / "user"
    user.mkdir()
    (user / "shard-00000.safetensors").write_bytes(b"mine")
    with pytest.raises(FeaturescopeError, match="holds no activation store"):
        _clean(user, {"shards": []}, everything=True)
    write_json(user / MANIFEST, {"name": "another program"})
    with pytest.raises(FeaturescopeError, match="holds no activation store"):
        _clean(user, {"shards": []}, everything=True)
    write_json(user / MANIFEST, {"format": STORE_FORMAT, "shards": []})
    with pytest.raises(FeaturescopeError, match="shard-00000.safetensors"):  # not written by a harvest
        _clean(user, {"shards": []}, everything=True)
    assert (user / "shard-00000.safetensors").read_bytes() == b"mine"
    _clean(user, {"shards": []}, everything=False)  # a rerun: a stray of that name is deleted only if ours
    assert (user / "shard-00000.safetensors").read_bytes() == b"mine"
