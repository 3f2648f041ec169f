"""The architecture registry is the one list of SAE architectures: the CLI, the config check, training's
defaults and the per-architecture inference paths all come from the classes it holds."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest
import torch

import featurescope.sae.registry as registry
from featurescope.activations import TensorSource
from featurescope.cli import build_parser
from featurescope.errors import FeaturescopeError
from featurescope.sae import ARCHITECTURES, SAE, ReLUSAE, SAEConfig, TopKSAE, architecture_class
from featurescope.synthetic import make_synthetic
from featurescope.train import TrainConfig, train
from featurescope.train.config import Plan
from featurescope.train.loop import plan
from featurescope.train.setup import arch_settings, param_groups

UNKNOWN = "unknown SAE architecture 'gated'; choose one of relu, topk, batchtopk, jumprelu"


def _source(rows: int = 512, d: int = 16) -> TensorSource:
    return TensorSource(make_synthetic(rows, d, 32, seed=0).data)


def _random_sae(arch: str, d_in: int = 16, d_sae: int = 64) -> SAE:
    sae = SAE.create(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=8 if arch in ("topk", "batchtopk")
                               else None), seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
        if arch == "batchtopk":
            sae.threshold.fill_(0.2)
        if arch == "jumprelu":
            sae.log_threshold.uniform_(-3, 0, generator=torch.Generator().manual_seed(3))
    return sae.eval()


def test_the_registry_is_architectures_and_the_train_choices():
    assert ARCHITECTURES == tuple(registry.REGISTRY) == ("relu", "topk", "batchtopk", "jumprelu")
    parser = build_parser()
    for name in ARCHITECTURES:
        assert parser.parse_args(["train", "--arch", name]).arch == name
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--arch", "gated"])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_has_its_training_knobs(arch):
    cls = architecture_class(arch)
    assert cls.architecture == arch
    betas, eps = cls.adam_betas, cls.adam_eps
    assert len(betas) == 2 and all(0 <= b < 1 for b in betas) and eps > 0
    source = _source()
    p = plan(TrainConfig(arch=arch), source)
    assert p.lr == cls.default_lr(p.features) > 0
    assert p.k == cls.default_k(p.features) and p.k_aux == cls.default_k_aux(source.d_model)
    assert p.sparsity_coefficient == cls.default_sparsity_coefficient
    fields = {f.name for f in dataclasses.fields(TrainConfig)} | set(Plan._fields)
    assert set(cls.training_settings.values()) <= fields
    extra = arch_settings(TrainConfig(arch=arch), p)
    assert list(extra) == list(cls.training_settings)
    sae = SAE.create(SAEConfig(d_in=16, d_sae=p.features, architecture=arch, k=p.k, extra=extra))
    assert all(hasattr(sae, key) for key in extra), "every training setting is read by the SAE"
    assert set(cls.fast_params) <= {n for n, _ in sae.named_parameters()}


def test_training_knobs_match_the_published_settings():
    table = {name: (architecture_class(name).adam_betas, architecture_class(name).adam_eps,
                    architecture_class(name).default_sparsity_coefficient, architecture_class(name).fast_params,
                    architecture_class(name).resamples_dead, architecture_class(name).subtracts_b_dec)
             for name in ARCHITECTURES}
    assert table == {
        "relu": ((0.9, 0.999), 1e-8, 5.0, (), True, False),
        "topk": ((0.9, 0.999), 6.25e-10, None, (), False, True),
        "batchtopk": ((0.9, 0.999), 6.25e-10, None, (), False, True),
        "jumprelu": ((0.0, 0.999), 1e-8, 1.0, ("log_threshold",), True, False),
    }
    assert architecture_class("relu").default_lr(1 << 20) == 3e-3
    assert architecture_class("topk").default_lr(1 << 14) == pytest.approx(2.8e-3)
    assert architecture_class("jumprelu").default_lr(64) == 8e-3
    assert architecture_class("batchtopk").default_k(4096) == 32 and architecture_class("topk").default_k(40) == 10
    assert architecture_class("relu").default_k(4096) is None


def test_an_unknown_architecture_is_one_clear_error(tmp_path):
    with pytest.raises(FeaturescopeError, match=UNKNOWN):
        architecture_class("gated")
    with pytest.raises(FeaturescopeError, match=UNKNOWN):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")
    with pytest.raises(FeaturescopeError, match=UNKNOWN):
        train(TrainConfig(out=str(tmp_path / "out"), arch="gated"), source=_source(), progress=False)
    folder = _random_sae("relu").save(tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(FeaturescopeError, match=f"cfg.json: {UNKNOWN}"):
        SAE.load(folder)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_inference_methods_agree_with_encode_and_decode(arch):
    sae = _random_sae(arch)
    x = make_synthetic(200, 16, 32, seed=5).data
    with torch.no_grad():
        f = sae.encode(x)
        row, feature, value = sae.encode_active(x)
        dense = torch.zeros_like(f).index_put_((row, feature), value.to(f.dtype))
        torch.testing.assert_close(dense, f * (f > 0))
        assert bool((row[1:] * sae.d_sae + feature[1:] > row[:-1] * sae.d_sae + feature[:-1]).all())
        partial, count = sae.decode_partial(sae.pre_acts(sae.normalize(x)))
        torch.testing.assert_close(sae.denormalize(partial + sae.b_dec), sae.decode(f), atol=1e-5, rtol=1e-5)
        assert int(count) == int((f != 0).sum())
        index = torch.tensor([0, 7, 63])
        theta = sae.feature_thresholds(index)
    assert (theta is None) == (arch == "topk"), "TopK's features depend on one another"
    if theta is not None:
        pre = sae.pre_acts(sae.normalize(x)).detach()[:, index]
        torch.testing.assert_close(pre * (pre > theta), f[:, index])


def test_a_new_architecture_is_one_class(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))

    class SlowReLU(ReLUSAE):
        architecture = "slow-relu"
        adam_betas, adam_eps = (0.5, 0.9), 1e-6
        default_sparsity_coefficient = 2.0
        fast_params = ("b_enc",)
        resamples_dead = False
        training_settings: ClassVar[dict[str, str]] = {"l1_coefficient": "sparsity_coefficient"}

    assert architecture_class("slow-relu") is SlowReLU
    adam, seen = torch.optim.Adam, {}
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **kw: seen.update(kw) or adam(*a, **kw))
    result = train(TrainConfig(out=str(tmp_path / "out"), arch="slow-relu", batch_size=128, threshold_lr_scale=3.0),
                   source=_source(), progress=False)
    assert type(result.sae) is SlowReLU and result.sae.cfg.extra == {"l1_coefficient": 2.0}
    assert (seen["betas"], seen["eps"]) == ((0.5, 0.9), 1e-6)
    assert type(SAE.load(result.path)) is SlowReLU
    groups = param_groups(result.sae, TrainConfig(arch="slow-relu", threshold_lr_scale=3.0))
    assert [g["lr_scale"] for g in groups] == [1.0, 3.0] and groups[1]["params"] == [result.sae.b_enc]

    class Unnamed(SlowReLU):  # inherits the name, so does not replace its parent
        pass

    assert architecture_class("slow-relu") is SlowReLU
    with pytest.raises(FeaturescopeError, match="two SAE classes for architecture 'topk'"):
        type("OtherTopK", (TopKSAE,), {"architecture": "topk"})
    assert registry.REGISTRY["topk"] is TopKSAE
