"""Sparse probing (SAEBench; Gurnee et al. 2023): can k SAE features do what a dense probe on the residual does?

For each dataset and each class, a balanced binary task (the class against an equal number of texts of the
other classes, in train and in test). Inputs are mean-pooled over each text's tokens (`pooled`). The dense
probe (`llm_test_accuracy`) is a logistic regression on the standardised mean residual; `sae_test_accuracy`
the same on all SAE features; `sae_top_{k}_test_accuracy` one on the k features whose train means differ most
between the two sides. Accuracies are on the test texts, averaged over a dataset's classes, then over datasets.
Field names follow SAEBench's `sparse_probing` output where the metric is the same.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from featurescope.errors import FeaturescopeError
from featurescope.evalsuite.datasets import ProbeDataset
from featurescope.evalsuite.pooled import Pooled, pooled
from featurescope.models import LanguageModel
from featurescope.sae import SAE

KS = (1, 2, 5)


class ClassResult(NamedTuple):
    """Test accuracies of one binary task: the dense probe, all SAE features, and k features each."""

    name: str
    llm: float
    sae: float
    top_k: dict[int, float]
    top_features: list[int]
    """The features picked at the largest k, best first."""


def top_features(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k columns of `x` whose means differ most between y == 1 and y == 0 (largest first)."""
    diff = np.abs(x[y == 1].mean(0) - x[y == 0].mean(0))
    order = np.argsort(-diff, kind="stable")
    return order[:k]


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   seed: int = 0) -> float:
    """Test accuracy of a logistic regression on standardised inputs."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    model.fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def _balanced(labels: np.ndarray, cls: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Row indices and 0/1 targets: every text of `cls` and as many of the other classes, drawn evenly."""
    pos = np.flatnonzero(labels == cls)
    rest = np.flatnonzero(labels != cls).tolist()
    neg = np.array(sorted(rng.sample(rest, min(len(pos), len(rest)))), dtype=np.int64)
    rows = np.concatenate([pos, neg])
    return rows, (labels[rows] == cls).astype(np.int64)


def binary_task(name: str, cls: int, train: Pooled, y_train: np.ndarray, test: Pooled, y_test: np.ndarray,
                ks: Sequence[int], seed: int = 0) -> ClassResult:
    """The probes of one class against the rest (module doc)."""
    rng = random.Random(seed * 1000 + cls)
    tr, ytr = _balanced(y_train, cls, rng)
    te, yte = _balanced(y_test, cls, rng)
    llm = probe_accuracy(train.residual[tr], ytr, test.residual[te], yte, seed)
    sae = probe_accuracy(train.features[tr], ytr, test.features[te], yte, seed)
    picked = top_features(train.features[tr], ytr, max(ks))
    top = {k: probe_accuracy(train.features[tr][:, picked[:k]], ytr, test.features[te][:, picked[:k]], yte, seed)
           for k in ks}
    return ClassResult(name, llm, sae, top, picked.tolist())


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def _metrics(results: Sequence[ClassResult], ks: Sequence[int]) -> dict[str, float]:
    out = {"llm_test_accuracy": _mean([r.llm for r in results]),
           "sae_test_accuracy": _mean([r.sae for r in results])}
    out.update({f"sae_top_{k}_test_accuracy": _mean([r.top_k[k] for r in results]) for k in ks})
    return out


def probe_dataset(ds: ProbeDataset, train: Pooled, test: Pooled, *, ks: Sequence[int] = KS,
                  seed: int = 0) -> tuple[dict[str, Any], list[ClassResult]]:
    """The probes of every class of `ds` on its pooled train and test texts: the dataset's detail record and the
    per-class results."""
    y_train = np.array([c for _, c in ds.train], dtype=np.int64)
    y_test = np.array([c for _, c in ds.test], dtype=np.int64)
    classes = range(len(ds.classes)) if len(ds.classes) > 2 else range(1)
    results = [binary_task(ds.classes[c], c, train, y_train, test, y_test, ks, seed) for c in classes]
    detail = {"dataset_name": ds.name, **_metrics(results, ks),
              "classes": {r.name: {"llm_test_accuracy": r.llm, "sae_test_accuracy": r.sae,
                                   **{f"sae_top_{k}_test_accuracy": r.top_k[k] for k in ks},
                                   "top_features": r.top_features} for r in results},
              "train_texts": len(ds.train), "test_texts": len(ds.test)}
    return detail, results


def encode_dataset(model: LanguageModel, sae: SAE, layer: int, ds: ProbeDataset, *, max_tokens: int = 64,
                   batch_size: int = 16, progress: bool = False) -> tuple[Pooled, Pooled]:
    """The pooled train and test texts of `ds`."""
    train, test = (pooled(model, sae, layer, [t for t, _ in split], max_tokens=max_tokens, batch_size=batch_size,
                          progress=progress, desc=f"{ds.name} {name}")
                   for name, split in (("train", ds.train), ("test", ds.test)))
    return train, test


def check_ks(ks: Sequence[int]) -> None:
    if not ks or min(ks) < 1:
        raise FeaturescopeError(f"sparse probing needs k values of 1 or more (got {list(ks)})", settings=("ks",))


def result(details: list[dict[str, Any]], ks: Sequence[int], max_tokens: int, seed: int,
           seconds: float) -> dict[str, Any]:
    """The sparse-probing record from per-dataset details (SAEBench's layout)."""
    names = ["llm_test_accuracy", "sae_test_accuracy", *(f"sae_top_{k}_test_accuracy" for k in ks)]
    summary = {name: _mean([d[name] for d in details]) for name in names}
    return {"eval_type_id": "sparse_probing",
            "eval_config": {"k_values": list(ks), "max_tokens": max_tokens, "random_seed": seed,
                            "dataset_names": [d["dataset_name"] for d in details], "pooling": "mean"},
            "eval_result_metrics": {"llm": {"llm_test_accuracy": summary["llm_test_accuracy"]},
                                    "sae": {k: v for k, v in summary.items() if k.startswith("sae_")}},
            "eval_result_details": details, "seconds": round(seconds, 2)}


def sparse_probing(model: LanguageModel, sae: SAE, layer: int, datasets: Sequence[ProbeDataset], *,
                   ks: Sequence[int] = KS, max_tokens: int = 64, batch_size: int = 16, seed: int = 0,
                   progress: bool = False) -> dict[str, Any]:
    """The sparse-probing result: SAEBench-style `eval_result_metrics` and per-dataset details."""
    if not datasets:
        raise FeaturescopeError("sparse probing needs at least one dataset")
    check_ks(ks)
    start = time.perf_counter()
    details = []
    for ds in datasets:
        train, test = encode_dataset(model, sae, layer, ds, max_tokens=max_tokens, batch_size=batch_size,
                                     progress=progress)
        details.append(probe_dataset(ds, train, test, ks=ks, seed=seed)[0])
    return result(details, ks, max_tokens, seed, time.perf_counter() - start)
