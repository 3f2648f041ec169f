"""A family of SAEs trained in one pass: each member equals its run alone, the batches are read once and
shared, members resume (or are skipped) on their own, and bad lists are one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import featurescope.train.family as family_module
from cli_helpers import run_main
from featurescope.activations import TensorSource
from featurescope.atomic import read_json
from featurescope.errors import FeaturescopeError
from featurescope.synthetic import make_synthetic
from featurescope.train import TrainConfig, train
from featurescope.train.family import members, train_family

KS = [2, 4, 8]


@pytest.fixture(scope="module")
def acts() -> torch.Tensor:
    return make_synthetic(2_000, 16, 32, mean_active=3, seed=3).data * 40.0


def base(out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"out": str(out), "arch": "topk", "features": 32, "batch_size": 250, "epochs": 2,
                          "checkpoint_seconds": 0.0, **kw})


class Counting(TensorSource):
    """A source that counts the passes over it and, optionally, raises KeyboardInterrupt after `after` batches."""

    def __init__(self, data: torch.Tensor, after: int | None = None) -> None:
        super().__init__(data)
        self.after, self.served, self.passes = after, 0, 0

    def batches(self, batch_size: int, **kw) -> Iterator[torch.Tensor]:
        self.passes += 1
        for b in super().batches(batch_size, **kw):
            if self.after is not None and self.served >= self.after:
                raise KeyboardInterrupt
            self.served += 1
            yield b


@pytest.fixture(scope="module")
def alone(acts, tmp_path_factory) -> dict[str, Path]:
    """Each member's settings trained alone, same seed: the reference."""
    root = tmp_path_factory.mktemp("alone")
    for k in KS:
        train(base(root / f"k{k}", k=k), source=TensorSource(acts), progress=False)
    return {f"k{k}": root / f"k{k}" for k in KS}


def assert_same(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a / "sae.safetensors")), load_file(str(b / "sae.safetensors"))
    assert set(ta) == set(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


def test_members_equal_their_runs_alone_on_one_shared_pass(acts, alone, tmp_path, monkeypatch):
    seen: dict[int, list[tuple[str, torch.Tensor]]] = {}
    real = family_module.Run.train_step

    def recording(run, batch):
        seen.setdefault(run.step, []).append((run.out.name, batch))
        real(run, batch)

    monkeypatch.setattr(family_module.Run, "train_step", recording)
    src = Counting(acts)
    cfg = base(tmp_path / "fam")
    result = train_family(cfg, members(cfg, {"k": KS}), source=src, progress=False)
    assert src.passes == 2  # one pass per epoch for the whole family, not one per member
    assert len(seen) == 2 * 8
    for step in seen.values():  # every member got the very same batch tensor at every step
        assert [name for name, _ in step] == ["k2", "k4", "k8"]
        assert all(b is step[0][1] for _, b in step)
    assert list(result.members) == ["k2", "k4", "k8"] and result.skipped == ()
    for name, path in alone.items():
        assert_same(tmp_path / "fam" / name, path)
        ours = read_json(tmp_path / "fam" / name / "training_summary.json")
        theirs = read_json(path / "training_summary.json")
        assert ours["metrics"] == theirs["metrics"] and ours["config"] == theirs["config"]
    index = read_json(tmp_path / "fam" / "family.json")
    assert index["format"] == "featurescope.train-family" and index["shared"]["batch_size"] == 250
    assert [(m["name"], m["path"], m["settings"]) for m in index["members"]] == [
        ("k2", "k2", {"k": 2}), ("k4", "k4", {"k": 4}), ("k8", "k8", {"k": 8})]
    assert sorted(p.name for p in (tmp_path / "fam").iterdir()) == ["family.json", "k2", "k4", "k8"]
    assert sorted(p.name for p in (tmp_path / "fam" / "k4").iterdir()) == sorted(p.name for p in alone["k4"].iterdir())


def test_an_interrupted_family_resumes_each_member_from_its_own_checkpoint(acts, alone, tmp_path):
    cfg = base(tmp_path / "fam", checkpoint_every=5)
    fam = members(cfg, {"k": KS})
    with pytest.raises(KeyboardInterrupt):
        train_family(cfg, fam, source=Counting(acts, after=7), progress=False)
    out = tmp_path / "fam"
    assert [read_json(out / n / "checkpoint" / "checkpoint.json")["step"] for n in ("k2", "k4", "k8")] == [5, 5, 5]
    shutil.rmtree(out / "k2")  # k2 finished (here: trained alone into its folder), k8 lost its checkpoint
    shutil.copytree(alone["k2"], out / "k2")
    shutil.rmtree(out / "k8" / "checkpoint")
    src = Counting(acts)
    result = train_family(cfg, fam, source=src, progress=False)
    assert result.skipped == ("k2",) and list(result.members) == ["k2", "k4", "k8"]
    assert src.passes == 2 and src.served == 16  # k8 from step 0; k4 joined it at step 5
    for name, path in alone.items():
        assert_same(out / name, path)
        assert read_json(out / name / "training_summary.json")["steps"] == 16
    again = train_family(cfg, fam, source=Counting(acts), progress=False)
    assert again.skipped == ("k2", "k4", "k8") and again.seconds == 0.0


def test_member_names_and_bad_families(acts, tmp_path):
    cfg = base(tmp_path / "fam")
    names = [m.name for m in members(cfg, {"k": [8, 16], "features": [64, 128]})]
    assert names == ["k8-f64", "k8-f128", "k16-f64", "k16-f128"]
    sweep = [{"arch": "relu", "name": "relu"}, {"k": 4, "lr": 0.01}, {"k": 4}]
    assert [m.name for m in members(cfg, None, sweep)] == ["relu", "k4-lr0.01", "k4"]
    bad = [
        ({"k": [4, 4]}, None, "lists 4 more than once"),
        (None, [{"seed": 1}], "`seed` is shared"),
        (None, [{"layer": 3}], "`layer` is shared"),  # one source feeds every member: one layer
        (None, [{"k": "8"}], "`k` must be int"),
        (None, [{"kk": 8}], "no setting `kk`"),
        ({"k": [4]}, [{"k": 8}], "also given as a list"),
        (None, [{"k": 4}, {"k": 4}], "two members are named 'k4'"),
    ]
    for lists, entries, message in bad:
        with pytest.raises(FeaturescopeError, match=message):
            members(cfg, lists, entries)
    with pytest.raises(FeaturescopeError, match="`k` must be in 1..features"):
        train_family(cfg, members(cfg, {"k": [4, 64]}), source=TensorSource(acts), progress=False)
    assert not (tmp_path / "fam").exists()  # every member is checked before anything is written
    with pytest.raises(FeaturescopeError, match="one process"):
        train_family(dataclasses.replace(cfg, distributed=2), members(cfg, {"k": [2, 4]}), source=TensorSource(acts))
    train(base(tmp_path / "single", k=4, epochs=1), source=TensorSource(acts), progress=False)
    with pytest.raises(FeaturescopeError, match="holds a single training run"):
        train_family(base(tmp_path / "single"), members(cfg, {"k": [2, 4]}), source=TensorSource(acts))


def test_cli_lists_train_a_family_and_bad_lists_are_one_line_errors(acts, tmp_path, capsys):
    npy = tmp_path / "acts.npy"
    np.save(npy, acts[:600].numpy())
    common = ["train", "--activations", str(npy), "--features", "32", "--batch-size", "200"]
    code, out, err = run_main(capsys, *common, "--out", str(tmp_path / "fam"), "--k", "2,4")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "fam").iterdir()) == ["family.json", "k2", "k4"]
    assert read_json(tmp_path / "fam" / "k4" / "cfg.json")["k"] == 4 and "2 SAEs" in out
    for args, message in [(["--k", "16,x"], "argument --k: expected one int value or several"),
                          (["--k", "4,"], "argument --k: expected one int value or several"),
                          (["--k", "4,4"], "--k lists 4 more than once"),
                          (["--k", "2,4", "--distributed", "2"], "--distributed")]:
        code, _, err = run_main(capsys, *common, "--out", str(tmp_path / "bad"), *args)
        assert code == 2 and err.startswith("featurescope: error: ") and message in err, err
        assert err.count("\n") == 1
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([{"k": 2}, {"seed": 3}]))
    code, _, err = run_main(capsys, *common, "--out", str(tmp_path / "bad"), "--sweep", str(sweep))
    assert code == 2 and "--seed is shared by every member" in err
    assert not (tmp_path / "bad").exists()
    (tmp_path / "fam" / "family.json").write_text(json.dumps({"format": "featurescope.train-family", "members": [3]}))
    code, _, err = run_main(capsys, *common, "--out", str(tmp_path / "fam"), "--k", "2,4")
    assert code == 2 and "family.json: not a featurescope family index (or a corrupt one)" in err, err
