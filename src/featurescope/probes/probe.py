"""`featurescope probe`: rank features per probe category by AUROC with held-out validation (or, with
`--suppress`, measure what clamping a feature does on the probe set), and store the results in the database."""

from __future__ import annotations

import datetime
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from featurescope._version import __version__
from featurescope.config_fields import option
from featurescope.featuredb import probes as probe_tables
from featurescope.models import LanguageModel
from featurescope.probes.encode import EncodedTexts, decode_tokens, encode_texts
from featurescope.probes.selection import CategoryResult, rank_category
from featurescope.probes.session import Session, best_labels, open_session, parse_features, require
from featurescope.probes.sets import ProbeSet, ProbeText, arrays, load_probe_set
from featurescope.probes.stats import DEFAULT_CALIBRATION, Split, split_parts
from featurescope.probes.suppress import Suppression, control_features, suppression_effect, text_nll
from featurescope.sae import SAE

MODES = ("clamp", "conditional")
PEAK_TOKENS = 3


@dataclass
class ProbeConfig:
    """Settings of `featurescope probe` (each field is also a `--flag`)."""

    db: str = option("", "feature database (from `featurescope analyze`); the results are added to it")
    set: str = option("safety", "probe set: a built-in name (safety) or a JSONL file (format: docs/probes.md)")
    category: str = option("", "only this category (default: all of the set's)")
    sae: str = option("", "SAE folder (default: the one the database records)")
    model: str = option("", "model (default: the one the database records)")
    heldout: float = option(0.5, "fraction of the matched groups (after --calibration) held out to validate the "
                                 "features found")
    calibration: float = option(DEFAULT_CALIBRATION, "fraction of the matched groups set aside, unseen here, to "
                                                     "calibrate `featurescope monitor`'s threshold")
    candidates: int = option(10, "best features on the discovery half that are tested on the held-out half")
    min_auroc: float = option(0.7, "held-out AUROC a feature needs to be reported")
    alpha: float = option(0.05, "level of the held-out permutation test (Bonferroni over the candidates)")
    permutations: int = option(2000, "label permutations of the held-out test")
    suppress: str = option("", "feature id(s) to clamp, comma-separated: measure the effect on the probe set's "
                               "texts instead of ranking features")
    multiple: float = option(-2.0, "with --suppress: clamp value as a multiple of the feature's max activation")
    mode: str = option("clamp", "with --suppress: clamp (every position) or conditional (where it fires)",
                       choices=MODES)
    controls: int = option(2, "with --suppress: random features of similar max activation measured the same way, "
                              "as a baseline")
    max_tokens: int = option(128, "tokens kept per text")
    batch_size: int = option(16, "texts per forward pass")
    seed: int = option(0, "seed of the split, the permutations and the bootstrap")
    device: str = option("auto", "cpu, cuda or auto")


class ProbeResult(NamedTuple):
    """The categories of one run with every candidate's label."""

    path: Path
    probe_set: str
    categories: list[CategoryResult]
    labels: dict[int, str]
    seconds: float


class SuppressionResult(NamedTuple):
    path: Path
    probe_set: str
    rows: list[Suppression]
    seconds: float


def check_config(cfg: ProbeConfig) -> ProbeSet:
    """The probe set, after checking every setting."""
    require(cfg.db, "no feature database given")
    require(0 < cfg.heldout < 1, f"`heldout` must be between 0 and 1 (got {cfg.heldout})",
            settings=("heldout",))
    require(0 <= cfg.calibration < 1, f"`calibration` must be in [0, 1) (got {cfg.calibration})",
            settings=("calibration",))
    require(0 < cfg.alpha < 1, f"`alpha` must be between 0 and 1 (got {cfg.alpha})", settings=("alpha",))
    require(0.5 <= cfg.min_auroc <= 1, f"`min_auroc` must be between 0.5 and 1 (got {cfg.min_auroc})",
            settings=("min_auroc",))
    for name in ("candidates", "permutations", "max_tokens", "batch_size"):
        require(getattr(cfg, name) > 0, f"`{name}` must be positive (got {getattr(cfg, name)})", settings=(name,))
    require(cfg.controls >= 0, f"`controls` must be ≥ 0 (got {cfg.controls})", settings=("controls",))
    require(cfg.mode in MODES, f"unknown `mode` {cfg.mode!r}; choose one of {', '.join(MODES)}",
            settings=("mode",))
    probe_set = load_probe_set(cfg.set)
    if cfg.category:
        probe_set.category(cfg.category)
    if cfg.suppress:
        from featurescope.featuredb.core import FeatureStore

        with FeatureStore.open(cfg.db) as store:
            require(parse_features(cfg.suppress, store.d_sae), "`suppress` names no feature", settings=("suppress",))
    return probe_set


def _categories(cfg: ProbeConfig, probe_set: ProbeSet) -> list[str]:
    return [cfg.category] if cfg.category else probe_set.categories


def _rank(cfg: ProbeConfig, probe_set: ProbeSet, sae: SAE, model: LanguageModel, layer: int,
          progress: bool) -> list[CategoryResult]:
    cats = _categories(cfg, probe_set)
    items = [t for c in cats for t in probe_set.category(c)]
    enc = encode_texts(model, sae, [t.text for t in items], layer, batch_size=cfg.batch_size,
                       max_tokens=cfg.max_tokens, progress=progress, desc="probe")
    acts = enc.max_per_text().numpy()
    cat_of = np.array([t.category for t in items])
    out = []
    for c in cats:
        own = np.flatnonzero(cat_of == c)
        labels, groups = arrays([items[j] for j in own])
        parts = split_parts(groups, labels, cfg.heldout, cfg.calibration, cfg.seed)
        use = ~parts.calibration  # the calibration part is never looked at here
        own, labels, groups = own[use], labels[use], groups[use]
        r = rank_category(c, acts[own], labels, groups, Split(parts.train[use], parts.heldout[use]),
                          candidates=cfg.candidates, min_auroc=cfg.min_auroc,
                          alpha=cfg.alpha, permutations=cfg.permutations,
                          seed=cfg.seed + probe_set.categories.index(c))
        positives = [int(j) for j in own[labels == 1]]
        out.append(r._replace(candidates=[cand._replace(peak_tokens=peak_tokens(model, enc, positives, cand.feature))
                                          for cand in r.candidates]))
    return out


def peak_tokens(model: LanguageModel, enc: EncodedTexts, texts: list[int], feature: int, n: int = PEAK_TOKENS
                ) -> list[list[Any]]:
    """The `n` most frequent tokens on which `feature` peaks in `texts` (those where it fires), with counts."""
    acts = enc.token_acts_many(texts, [feature] * len(texts))
    peaks = [enc.token_ids[t][int(np.argmax(a))] for t, a in zip(texts, acts, strict=True) if max(a, default=0) > 0]
    counts = Counter(decode_tokens(model, peaks)).most_common(n)
    return [[token, c] for token, c in counts]


def run_probe(cfg: ProbeConfig, *, sae: SAE | None = None, model: LanguageModel | None = None,
              progress: bool = True) -> ProbeResult | SuppressionResult:
    """Rank and validate features per category and store them (or, with `cfg.suppress`, measure suppression)."""
    t0 = time.perf_counter()
    probe_set = check_config(cfg)
    with open_session(cfg.db, sae=sae or cfg.sae, model=model or cfg.model, device=cfg.device) as s:
        if cfg.suppress:
            return _suppress(cfg, probe_set, s, t0)
        results = _rank(cfg, probe_set, s.sae, s.model, s.layer, progress)
        meta = {"path": str(probe_set.path), "categories": [r.category for r in results],
                "heldout": cfg.heldout, "calibration": cfg.calibration, "seed": cfg.seed,
                "candidates": cfg.candidates, "min_auroc": cfg.min_auroc,
                "alpha": cfg.alpha, "permutations": cfg.permutations, "max_tokens": cfg.max_tokens,
                "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "featurescope_version": __version__}
        cat_rows = [(probe_set.name, r.category, r.positives, r.negatives, r.train_items, r.heldout_items,
                     r.best_train_auroc, r.null_train_max, len(r.reported), r.verdict) for r in results]
        res_rows = [(probe_set.name, r.category, rank, c.feature, c.train_auroc, c.heldout_auroc, c.p_value, c.auroc,
                     int(c.reported), json.dumps(c.peak_tokens, ensure_ascii=False))
                    for r in results for rank, c in enumerate(r.candidates)]
        with probe_tables.update_db(cfg.db) as con:
            old = probe_tables.get_meta(con, f"probe:{probe_set.name}") or {}
            same_split = ((old.get("heldout"), old.get("calibration"), old.get("seed"))
                          == (cfg.heldout, cfg.calibration, cfg.seed))
            if cfg.category and same_split:  # keep the other categories of an earlier run with the same split
                kept = {*old.get("categories", []), cfg.category}
                meta["categories"] = [c for c in probe_set.categories if c in kept]
                cat_rows += [tuple(r) for r in con.execute("SELECT * FROM probe_categories WHERE probe_set = ? AND "
                                                          "category != ?", (probe_set.name, cfg.category))]
                res_rows += [tuple(r) for r in con.execute("SELECT * FROM probe_results WHERE probe_set = ? AND "
                                                          "category != ?", (probe_set.name, cfg.category))]
            probe_tables.replace_probe(con, probe_set.name, meta, cat_rows, res_rows)
        labels = best_labels(s.store, sorted({c.feature for r in results for c in r.candidates}))
    return ProbeResult(Path(cfg.db), probe_set.name, results, labels, time.perf_counter() - t0)


def _suppress(cfg: ProbeConfig, probe_set: ProbeSet, s: Session, t0: float) -> SuppressionResult:
    features = parse_features(cfg.suppress, s.sae.cfg.d_sae)
    max_acts = s.store.max_activations()
    density = s.store.densities().numpy()
    reported = {r.feature for r in probe_tables.reported_features(s.store, probe_set.name)}
    value = f"{cfg.multiple:g}x"
    rows: list[Suppression] = []
    clean: dict[str, np.ndarray] = {}
    for f in features:
        require(float(max_acts[f]) > 0, f"feature {f} never fired in the analysed corpus: its max activation is 0, "
                "so a multiple of it is 0 too")
        cats = _categories(cfg, probe_set)
        if not cfg.category:
            hits = [r.category for r in probe_tables.probes_for_feature(s.store, f)
                    if r.reported and r.probe_set == probe_set.name]
            cats = hits or cats
        controls = control_features(max_acts.numpy(), density, f, cfg.controls, reported | set(features), cfg.seed)
        for c in cats:
            items: list[ProbeText] = probe_set.category(c)
            if c not in clean:
                clean[c] = text_nll(s.model, [t.text for t in items], batch_size=max(1, cfg.batch_size // 2),
                                    max_tokens=cfg.max_tokens)
            for g in [f, *controls]:
                rows.append(suppression_effect(s.model, s.sae, items, g, value, max_acts, mode=cfg.mode,
                                               batch_size=max(1, cfg.batch_size // 2), max_tokens=cfg.max_tokens,
                                               seed=cfg.seed, clean=clean[c], target=f))
    with probe_tables.update_db(cfg.db) as con:
        probe_tables.upsert_suppression(con, [(probe_set.name, *r) for r in rows])
    return SuppressionResult(Path(cfg.db), probe_set.name, rows, time.perf_counter() - t0)
