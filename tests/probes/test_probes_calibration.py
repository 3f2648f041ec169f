"""The monitor's --fpr holds on fresh negatives: features are chosen, validated and calibrated on disjoint parts.

Synthetic probe sets with known ground truth: every feature is noise (no feature detects anything), so whatever
the probe picks was picked by chance, and the texts it was picked on look better than fresh ones. The
calibration part must be free of that selection; calibrating on the held-out part (what the monitor did before)
must visibly break the promise, which shows the test can fail.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from featurescope.errors import FeaturescopeError
from featurescope.featuredb import probes as probe_tables
from featurescope.probes.monitor import MonitorConfig, best_of_categories, calibration_texts
from featurescope.probes.selection import rank_category
from featurescope.probes.sets import ProbeSet, ProbeText, arrays
from featurescope.probes.stats import Split, conformal_threshold, split_parts

CATEGORIES = ("a",)
PAIRS = 63  # 19 calibration pairs: (19 + 1)(1 − 0.1) is an integer, so E[FPR] is exactly 0.1
FEATURES = 300
FPR = 0.1
RUNS = 120
FRESH = 1000


def _probe_set() -> ProbeSet:
    items = [ProbeText(c, label, f"{c} {p} {label}", f"{c}/{p}") for c in CATEGORIES for p in range(PAIRS)
             for label in (1, 0)]
    return ProbeSet("synthetic", Path("synthetic.jsonl"), items)


def _store(heldout: float, calibration: float | None, seed: int) -> SimpleNamespace:
    """An object with `.con` holding the probes_meta a probe run with these settings stores."""
    con = sqlite3.connect(":memory:")
    probe_tables.ensure_schema(con)
    meta = {"heldout": heldout, "seed": seed, **({"calibration": calibration} if calibration is not None else {})}
    probe_tables.set_meta(con, "probe:synthetic", meta)
    return SimpleNamespace(con=con)


def _run(probe_set: ProbeSet, rng: np.random.Generator, seed: int, *, leak: bool) -> float:
    """One probe run + monitor on fresh noise; returns the realised false-positive rate on fresh negatives."""
    scores = {t.text: rng.normal(size=FEATURES) for t in probe_set.items}
    rows = []
    for c in CATEGORIES:
        items = probe_set.category(c)
        labels, groups = arrays(items)
        parts = split_parts(groups, labels, 0.5, 0.3, seed)  # as `featurescope probe` splits
        use = ~parts.calibration
        x = np.stack([scores[t.text] for t in items])[use]
        r = rank_category(c, x, labels[use], groups[use], Split(parts.train[use], parts.heldout[use]),
                          candidates=FEATURES, min_auroc=0.5, alpha=1.0, permutations=20, seed=seed)
        rows += [SimpleNamespace(category=c, feature=k.feature, heldout_auroc=k.heldout_auroc) for k in r.reported]
    watched = [r.feature for r in best_of_categories(rows)]
    assert len(watched) == len(CATEGORIES)
    if leak:  # the old monitor: the held-out half, whose AUROC picked the features
        held = []
        for c in CATEGORIES:
            items = probe_set.category(c)
            labels, groups = arrays(items)
            parts = split_parts(groups, labels, 0.5, 0.3, seed)
            held += [t for t, m in zip(items, parts.heldout, strict=True) if m]
    else:
        held = calibration_texts(MonitorConfig(db="x"), _store(0.5, 0.3, seed), probe_set)
    negatives = np.array([scores[t.text][watched].max() for t in held if t.label == 0])
    tau = conformal_threshold(negatives, FPR)
    fresh = rng.normal(size=(FRESH, FEATURES))[:, watched].max(axis=1)
    return float((fresh > tau).mean())


def test_parts_are_disjoint_seeded_and_keep_pairs_together():
    labels, groups = arrays(_probe_set().category("a"))
    p = split_parts(groups, labels, 0.5, 0.3, 7)
    assert (p.train.astype(int) + p.heldout + p.calibration == 1).all()
    assert p.calibration.sum() == 2 * 19 and p.heldout.sum() == 2 * 22 and p.train.sum() == 2 * 22
    for mask in p:
        assert set(groups[mask]).isdisjoint(groups[~mask])
    again = split_parts(groups, labels, 0.5, 0.3, 7)
    assert all((a == b).all() for a, b in zip(p, again, strict=True))
    none = split_parts(groups, labels, 0.5, 0.0, 7)
    assert not none.calibration.any() and none.heldout.sum() == 2 * 32


def test_realised_fpr_on_fresh_negatives_is_within_sampling_error():
    probe_set = _probe_set()
    n_cal = len(CATEGORIES) * round(PAIRS * 0.3)  # calibration negatives per run
    results = {}
    for leak in (False, True):
        rng = np.random.default_rng(123)
        rates = np.array([_run(probe_set, rng, seed, leak=leak) for seed in range(RUNS)])
        results[leak] = (rates.mean(), rates.std(ddof=1) / np.sqrt(RUNS))
    mean, se = results[False]
    # split conformal: E[FPR] is in [fpr − 1/(n+1), fpr]; allow 4 standard errors of the mean over runs
    assert FPR - 1 / (n_cal + 1) - 4 * se <= mean <= FPR + 4 * se, results
    leaked, leaked_se = results[True]
    assert leaked > FPR + 4 * leaked_se and leaked > mean + 0.03, results  # the test can fail


def test_an_older_probe_run_cannot_calibrate_its_own_choice():
    probe_set = _probe_set()
    with pytest.raises(FeaturescopeError, match="re-run `featurescope probe`"):
        calibration_texts(MonitorConfig(db="x"), _store(0.5, None, 0), probe_set)
    named = calibration_texts(MonitorConfig(db="x", features="1"), _store(0.5, None, 0), probe_set)
    assert len(named) == 2 * len(CATEGORIES) * 19  # explicit features: the default calibration part
