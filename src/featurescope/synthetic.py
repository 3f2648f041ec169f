"""Synthetic activations with known features, and how well an SAE's decoder recovers them; and a random
activation store on disk (`random_store`) for measuring the stages that read one.

Each row is a sparse positive combination of `n_features` unit directions plus small Gaussian noise.
Feature i fires with a Zipf-like probability p_i ∝ 1/(i + 10)^zipf_exponent, scaled so that the mean
number of active features per row is `mean_active` (each feature is drawn a Poisson number of times per
row, and fires if drawn at all). A firing feature's magnitude is the product of a
gain shared by its group (features i with the same i // group_size) within that row and its own
factor, so magnitudes are positive and correlated within groups.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from featurescope.errors import FeaturescopeError


class SyntheticData(NamedTuple):
    """Rows and the ground truth they were built from."""

    data: Tensor
    """[n_samples, d] float32."""
    true_features: Tensor
    """[n_features, d] float32 unit rows."""
    firing_rates: Tensor
    """[n_features] probability that each feature is active in a row."""


class Recovery(NamedTuple):
    """How well the rows of an SAE's decoder match the true features (cosine similarities)."""

    hungarian: float
    """Mean cosine over a one-to-one matching of true features to latents (optimal assignment)."""
    true_max_cos: float
    """Mean over true features of the best cosine with any latent."""
    latent_max_cos: float
    """Mean over latents of the best cosine with any true feature."""


def _splitmix_uniform(keys: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic uniforms in [0, 1) from int64 keys (SplitMix64 hash)."""
    z = keys.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(2**64 - 1)
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(2**64 - 1)
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(2**64 - 1)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def make_synthetic(
    n_samples: int,
    d: int,
    n_features: int,
    *,
    mean_active: float = 8.0,
    zipf_exponent: float = 0.6,
    group_size: int = 8,
    noise: float = 0.02,
    seed: int = 0,
) -> SyntheticData:
    """`n_samples` rows in R^d built from `n_features` random unit directions (deterministic by seed).

    Magnitudes average about 1 (group gain and own factor are each uniform in [0.5, 1.5));
    `noise` is the standard deviation of the Gaussian noise per coordinate.
    """
    if n_samples <= 0 or d <= 0 or n_features <= 0:
        raise FeaturescopeError("n_samples, d and n_features must be positive")
    if not 0 < mean_active <= n_features:
        raise FeaturescopeError(f"mean_active must be in (0, n_features], got {mean_active}")
    # numpy draws everything but the noise, so no torch.manual_seed(seed) elsewhere reproduces the features
    rng = np.random.default_rng([seed, 0x5EED])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    true = torch.from_numpy(rng.standard_normal((n_features, d)).astype(np.float32))
    true = true / true.norm(dim=1, keepdim=True)

    weights = 1.0 / (np.arange(n_features) + 10.0) ** zipf_exponent
    rates = np.minimum(weights / weights.sum() * mean_active, 0.95)
    draws = -np.log1p(-rates)  # Poisson(draws_i) times drawn ⇒ fires with probability rates_i
    probs = draws / draws.sum()
    counts = rng.poisson(draws.sum(), size=n_samples)
    feats = rng.choice(n_features, size=int(counts.sum()), p=probs)
    rows = np.repeat(np.arange(n_samples, dtype=np.int64), counts)
    keys = np.unique(rows * n_features + feats)  # a feature drawn twice in a row fires once
    rows, feats = keys // n_features, keys % n_features
    counts = np.bincount(rows, minlength=n_samples)
    total = len(keys)
    n_groups = -(-n_features // group_size)
    gain = 0.5 + _splitmix_uniform(rows * n_groups + feats // group_size, seed)
    mags = gain * (0.5 + rng.random(total))

    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    data = F.embedding_bag(
        torch.from_numpy(feats), true, torch.from_numpy(offsets), mode="sum",
        per_sample_weights=torch.from_numpy(mags.astype(np.float32)),
    )
    if noise > 0:
        data += noise * torch.randn(n_samples, d, generator=gen)
    return SyntheticData(data, true, torch.from_numpy(rates.astype(np.float32)))


def recovery(sae_W_dec: Tensor, true_features: Tensor, *, assign: bool = True) -> Recovery:
    """Compare decoder rows [n_latents, d] with true features [n_features, d] by cosine similarity.

    `assign=False` skips the optimal assignment (`hungarian` is NaN): it takes minutes at 16k × 16k and more.
    """
    a = sae_W_dec.detach().float().cpu()
    b = true_features.detach().float().cpu()
    if a.shape[1] != b.shape[1]:
        raise FeaturescopeError(f"decoder width {a.shape[1]} differs from the features' width {b.shape[1]}")
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (b @ a.T).numpy()  # [n_features, n_latents]
    hungarian = float("nan")
    if assign:
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(cos, maximize=True)
        hungarian = float(cos[r, c].sum() / b.shape[0])
    return Recovery(
        hungarian=hungarian,
        true_max_cos=float(cos.max(1).mean()),
        latent_max_cos=float(cos.max(0).mean()),
    )


def random_store(path: str | Path, contexts: int, *, ctx_len: int = 128, d: int = 640, shard_contexts: int = 64,
                 seed: int = 0) -> None:
    """Write an activation store (docs/formats/activation-store.md) of `contexts` contexts of random token ids
    and random bfloat16 rows; position 0 of every context is BOS (id 2), masked out, not a row."""
    from featurescope.activations import MANIFEST, STORE_FORMAT, STORE_VERSION, shard_name
    from featurescope.atomic import write_json, write_safetensors

    path = Path(path)
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True)
    shards = []
    for i, s in enumerate(range(0, contexts, shard_contexts)):
        n = min(shard_contexts, contexts - s)
        tokens = torch.randint(1000, 50000, (n, ctx_len), generator=g, dtype=torch.int32)
        tokens[:, 0] = 2
        mask = torch.ones(n, ctx_len, dtype=torch.uint8)
        mask[:, 0] = 0
        acts = (torch.randn(n * (ctx_len - 1), d, generator=g) * 100).to(torch.bfloat16)
        write_safetensors(path / shard_name(i), {"acts": acts, "tokens": tokens, "mask": mask})
        shards.append({"file": shard_name(i), "rows": len(acts), "contexts": n, "partial": False,
                       "bytes": (path / shard_name(i)).stat().st_size})
    write_json(path / MANIFEST, {"format": STORE_FORMAT, "version": STORE_VERSION, "model": "default", "layer": 9,
                                 "d_model": d, "dtype": "bfloat16", "ctx_len": ctx_len, "corpus": "synthetic",
                                 "complete": True, "shards": shards})
