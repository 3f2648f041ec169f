"""Build the API's JSON views from the feature database (no HTTP here)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from featurescope.featuredb import core as featuredb
from featurescope.featuredb import records
from featurescope.server import limits, schemas
from featurescope.server.context import Explorer, finite

DENSITY_BINS_PER_DECADE = 4
QUALITY_KEYS = ("fvu", "l0", "dead_fraction", "alive", "loss_recovered", "ce_clean", "ce_spliced", "ce_zero")


def _num(x: Any) -> float:
    v = finite(x)
    return 0.0 if v is None else v


def info(ex: Explorer) -> schemas.Info:
    """What the database is and what the explorer can do."""
    m = ex.meta

    def opt_int(key: str) -> int | None:
        return int(m[key]) if m.get(key) is not None else None

    return schemas.Info(
        db=ex.path.name, d_sae=ex.d_sae, d_in=opt_int("d_in"), model=m.get("model"), layer=opt_int("layer"),
        architecture=m.get("sae_architecture"), k=opt_int("sae_k"), tokens=opt_int("tokens"),
        corpus=None if m.get("corpus") is None else str(m["corpus"]), created=m.get("created"),
        map_method=m.get("map_method"), live=ex.live is not None, limits=limits.as_dict())


def summary(s: records.FeatureSummary) -> schemas.FeatureSummary:
    return schemas.FeatureSummary(id=s.id, density=_num(s.density), max=_num(s.max), label=s.label,
                                  score=finite(s.score), score_lower=finite(s.score_lower))


def feature_summary(store: featuredb.FeatureStore, i: int) -> schemas.FeatureSummary:
    """Feature `i`'s density, max and best label."""
    density, top = store.con.execute("SELECT density, max FROM features WHERE id = ?", (i,)).fetchone()
    best = records.best_label(store.labels(i))
    return schemas.FeatureSummary(id=i, density=_num(density), max=_num(top), label=best.text if best else "",
                                  score=finite(best.score) if best else None,
                                  score_lower=finite(best.score_lower) if best else None)


def _example(e: records.Example) -> schemas.Example:
    return schemas.Example(kind=e.kind, interval=e.interval, rank=e.rank, value=_num(e.value), context=e.context,
                           position=e.position, start=e.start, tokens=e.tokens, token_ids=e.token_ids,
                           acts=[_num(a) for a in e.acts])


def _effects(effects: list[records.TokenEffect]) -> list[schemas.TokenEffect]:
    return [schemas.TokenEffect(token=t.token, text=t.text, value=_num(t.value)) for t in effects]


def neighbours(rows: list[records.Neighbour]) -> list[schemas.Neighbour]:
    return [schemas.Neighbour(feature=n.feature, cosine=_num(n.cosine), label=n.label) for n in rows]


def feature(ex: Explorer, f: records.Feature) -> schemas.FeatureDetail:
    """Everything about one feature."""
    s = f.stats
    stats = schemas.Stats(count=s.count, density=_num(s.density), mean=finite(s.mean), std=finite(s.std),
                          max=_num(s.max), max_context=s.max_context, max_position=s.max_position,
                          decoder_norm=_num(s.decoder_norm))
    hist = schemas.Histogram(max=_num(f.histogram.max), counts=f.histogram.counts) if f.histogram else None
    best = f.label
    return schemas.FeatureDetail(
        id=f.id, label=best.text if best else "", stats=stats, histogram=hist,
        top=[_example(e) for e in f.top], quantiles=[_example(e) for e in f.quantiles],
        positive_logits=_effects(f.positive_logits), negative_logits=_effects(f.negative_logits),
        neighbours=neighbours(f.neighbours), map_xy=[_num(v) for v in f.map_xy] if f.map_xy else None,
        labels=[schemas.Label(kind=lb.kind, text=lb.text, score=finite(lb.score), details=lb.details,
                              score_lower=finite(lb.score_lower))
                for lb in f.labels],
        intervals=int(ex.meta["intervals"]) if ex.meta.get("intervals") is not None else None)


def map_points(store: featuredb.FeatureStore) -> schemas.MapPoints:
    """Every feature's map coordinates, density and best label."""
    rows = store.con.execute("SELECT m.feature, m.x, m.y, f.density FROM map m JOIN features f ON f.id = m.feature "
                             "ORDER BY m.feature").fetchall()
    labels = dict(store.con.execute(
        "SELECT feature, text FROM (SELECT feature, text, ROW_NUMBER() OVER (PARTITION BY feature ORDER BY "
        f"{store.label_rank_sql()} DESC, kind = 'llm' DESC) AS r FROM labels) WHERE r = 1").fetchall())
    return schemas.MapPoints(method=store.meta.get("map_method"), ids=[r[0] for r in rows],
                             x=[_num(r[1]) for r in rows], y=[_num(r[2]) for r in rows],
                             density=[_num(r[3]) for r in rows], labels=[labels.get(r[0], "") for r in rows])


def density_histogram(store: featuredb.FeatureStore) -> schemas.DensityHistogram:
    """Features binned by log10 density, DENSITY_BINS_PER_DECADE bins per decade."""
    d = store.densities().numpy()
    alive = d[d > 0]
    if len(alive) == 0:
        return schemas.DensityHistogram(edges=[], counts=[], never_fired=len(d))
    lo = math.floor(np.log10(alive.min()) * DENSITY_BINS_PER_DECADE) / DENSITY_BINS_PER_DECADE
    hi = max(lo + 1 / DENSITY_BINS_PER_DECADE, math.ceil(np.log10(alive.max()) * DENSITY_BINS_PER_DECADE)
             / DENSITY_BINS_PER_DECADE)
    edges = np.linspace(lo, hi, round((hi - lo) * DENSITY_BINS_PER_DECADE) + 1)
    counts, _ = np.histogram(np.log10(alive), bins=edges)
    return schemas.DensityHistogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts],
                                    never_fired=int((d <= 0).sum()))


def _metrics(values: Any) -> dict[str, float | None]:
    if not isinstance(values, dict):
        return {}
    return {k: finite(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def overview(ex: Explorer) -> schemas.Overview:
    """SAE quality and the density histogram of all features."""
    quality = _metrics(ex.meta.get("quality"))
    sae_metrics = _metrics(ex.meta.get("sae_metrics"))
    ce_keys = ("loss_recovered", "ce_clean", "ce_spliced", "ce_zero")
    on = ex.eval_measured_on.get("loss_recovered")
    candidates = [("the feature database", quality), ("the training summary", sae_metrics),
                  (f"featurescope eval, {on}" if on else "featurescope eval", ex.eval_metrics)]
    if ex.live is not None and ex.live.ce is not None:
        candidates.append((f"measured by this explorer on {ex.live.ce['tokens']} tokens of {ex.live.ce['corpus']}",
                           _metrics(ex.live.ce)))
    source = None
    for origin, values in candidates:  # the last one that has it wins: the most recent measurement
        if values.get("loss_recovered") is not None:
            source = origin
            quality.update({k: values.get(k) for k in ce_keys})
    if ex.eval_metrics.get("ood_loss_recovered") is not None:
        quality["ood_loss_recovered"] = ex.eval_metrics["ood_loss_recovered"]
    ordered = {k: quality[k] for k in QUALITY_KEYS if k in quality}
    ordered.update({k: v for k, v in quality.items() if k not in ordered})
    return schemas.Overview(info=info(ex), quality=ordered, sae_metrics=sae_metrics, ce_source=source,
                            ood_source=ex.eval_measured_on.get("ood_loss_recovered"),
                            density=ex.cached("density_histogram", density_histogram))
