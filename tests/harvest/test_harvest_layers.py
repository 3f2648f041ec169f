"""A harvest of several layers: each layer's store equals a one-layer harvest of it; train, eval and analyze pick
the layer; a layer that is not there is one clear error; a run killed between two manifests resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from featurescope.activations import ActivationStore, open_source
from featurescope.cli import flag_wording
from featurescope.errors import FeaturescopeError
from featurescope.harvest import HarvestConfig, harvest

LAYERS = (2, 5)
SETTINGS = {"tokens": 100, "ctx_len": 16, "shard_contexts": 2, "batch_size": 2}


def _same(a: Path, b: Path) -> None:
    x, y = ActivationStore(a), ActivationStore(b)
    assert len(x.shards) == len(y.shards) and x.n_rows == y.n_rows == SETTINGS["tokens"]
    assert [s["stats"] for s in x.shards] == [s["stats"] for s in y.shards]
    for i in range(len(x.shards)):
        for u, v in zip(x.read_shard(i), y.read_shard(i), strict=True):
            assert torch.equal(u, v)


@pytest.fixture(scope="module")
def stores(gemma, tmp_path_factory):
    """A harvest of layers 2 and 5, and a one-layer harvest of each."""
    tmp = tmp_path_factory.mktemp("layers")
    got = harvest(HarvestConfig(out=str(tmp / "multi"), layer="5,2", **SETTINGS), model=gemma, progress=False)
    assert got.layers == LAYERS and got.complete and got.rows == len(LAYERS) * SETTINGS["tokens"]
    for layer in LAYERS:
        harvest(HarvestConfig(out=str(tmp / f"one-{layer}"), layer=layer, **SETTINGS), model=gemma, progress=False)
    return tmp


def test_each_layer_is_the_one_layer_harvest(stores):
    multi = stores / "multi"
    assert sorted(p.name for p in multi.iterdir()) == ["layer-2", "layer-5", "layers.json"]
    assert json.loads((multi / "layers.json").read_text())["layers"] == list(LAYERS)
    for layer in LAYERS:
        _same(stores / f"one-{layer}", multi / f"layer-{layer}")
        assert open_source(multi, "heldout", layer).layer == layer  # the held-out split, per layer
    one = stores / "one-2"  # one layer: the store itself, its setting an int as before
    assert (one / "manifest.json").is_file() and not any(p.is_dir() or p.name == "layers.json" for p in one.iterdir())
    assert json.loads((one / "manifest.json").read_text())["config"]["layer"] == 2
    assert HarvestConfig(out="x", layer="9").layer == 9 and HarvestConfig(out="x", layer="9,3,9").layer == "3,9"
    with pytest.raises(FeaturescopeError, match="several such as 3,9,15"):
        HarvestConfig(out="x", layer="3;9")


def test_a_missing_layer_is_one_clear_error(stores, gemma, capsys, tmp_path):
    from featurescope.cli import main

    assert main(["train", "--activations", str(stores / "multi"), "--out", str(tmp_path / "s"), "--layer", "7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("no layer 7 (harvested layers: 2, 5; choose one with --layer)\n")
    assert main(["info", str(stores / "multi")]) == 0
    info = json.loads(capsys.readouterr().out)["layers"]
    assert [(k, v["layer"], v["n_rows"]) for k, v in info.items()] == [("2", 2, 100), ("5", 5, 100)]
    with pytest.raises(FeaturescopeError, match="a harvest of layers 2, 5; choose one with `layer`"):
        open_source(stores / "multi")
    with pytest.raises(FeaturescopeError, match="holds layer 2, not layer 5"):
        open_source(stores / "one-2", layer=5)
    assert open_source(stores / "one-2").layer == open_source(stores / "one-2", layer=2).layer == 2  # as today
    with pytest.raises(FeaturescopeError, match="layers 2, 5, not layer 2 alone"):
        harvest(HarvestConfig(out=str(stores / "multi"), layer=2, **SETTINGS), model=gemma, progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "layers.json").write_text(json.dumps({**json.loads((stores / "multi" / "layers.json").read_text()),
                                                    "layers": None}))
    with pytest.raises(FeaturescopeError, match="corrupt index of a multi-layer harvest"):
        open_source(broken)


def test_a_run_killed_between_two_manifests_resumes(stores, gemma, tmp_path):
    import shutil

    out = tmp_path / "multi"
    shutil.copytree(stores / "multi", out)
    behind = json.loads((out / "layer-2" / "manifest.json").read_text())  # layer 5 wrote its last round, 2 not
    last = behind["shards"].pop()
    for key in ("rows", "sum_norm", "excluded_positions", "excluded_sum_norm"):
        behind["stats"][key] -= last["stats"][key]
    behind["complete"] = False
    (out / "layer-2" / "manifest.json").write_text(json.dumps(behind))
    again = harvest(HarvestConfig(out=str(out), layer="2,5", **SETTINGS), model=gemma, progress=False)
    assert again.complete and again.new_rows == last["rows"] + json.loads(
        (out / "layer-5" / "manifest.json").read_text())["shards"][-1]["rows"]  # that round again, both layers
    for layer in LAYERS:
        _same(stores / f"one-{layer}", out / f"layer-{layer}")


def test_train_eval_and_analyze_pick_the_layer(stores, gemma, tmp_path):
    from featurescope.analysis import AnalyzeConfig, analyze
    from featurescope.evaluate import EvalConfig, evaluate
    from featurescope.featuredb import FeatureStore
    from featurescope.sae import SAE
    from featurescope.train import TrainConfig, train

    multi = str(stores / "multi")
    small = {"features": 64, "k": 4, "batch_size": 32, "checkpoint_every": 0, "device": "cpu"}
    with pytest.raises(FeaturescopeError, match="no layer 3") as e:
        train(TrainConfig(activations=multi, out=str(tmp_path / "x"), layer=3, **small), progress=False)
    assert "--layer" in flag_wording(e.value)
    train(TrainConfig(activations=multi, out=str(tmp_path / "sae"), layer=5, **small), progress=False)
    sae = SAE.load(tmp_path / "sae")
    assert sae.cfg.layer == 5
    # eval and analyze read the SAE's layer unless told
    ev = evaluate(EvalConfig(sae=str(tmp_path / "sae"), activations=multi, ce_contexts=0, ood_corpus=""),
                  model=gemma, progress=False)
    assert ev.split == "heldout" and ev.reconstruction is not None
    with pytest.raises(FeaturescopeError, match="from layer 2 but the SAE reads layer 5"):
        evaluate(EvalConfig(sae=str(tmp_path / "sae"), activations=multi, layer=2, ce_contexts=0, ood_corpus=""),
                 model=gemma, progress=False)
    db = analyze(AnalyzeConfig(sae=str(tmp_path / "sae"), out=str(tmp_path / "f.db"), activations=multi,
                               map="none", top_k=3, window=4), model=gemma, progress=False)
    assert db.tokens == SETTINGS["tokens"]
    with FeatureStore.open(db.path) as fs:
        assert fs.meta["layer"] == 5 and fs.meta["activations"] == str((stores / "multi" / "layer-5").resolve())
