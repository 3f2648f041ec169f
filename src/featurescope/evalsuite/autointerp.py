"""AutoInterp detection (SAEBench's `autointerp`; Bills et al. 2023, Paulo et al. 2024) through an LLM behind an
OpenAI-compatible endpoint, with the scorer `featurescope explain` uses (`analysis.explain.explain_feature`).

It reads the SAE's feature database (`analyze`'s top contexts, quantile samples and non-firing windows): for
`features` features drawn at random (seeded) among those that fire, the explainer writes an explanation from the
top contexts, then predicts which of a shuffled set of held-out windows fire given only that explanation. A
feature's score is the balanced accuracy of those predictions; `autointerp_score` is their mean over the
features that could be scored (chance 0.5). Nothing is written to the database's labels.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from featurescope.analysis.explain import Explainer, explain_feature
from featurescope.featuredb import FeatureStore
from featurescope.sae import SAE

NOT_GIVEN = ("AutoInterp needs an explainer model behind an OpenAI-compatible endpoint (--explainer URL) and the "
             "SAE's feature database (--db)")


def skipped(reason: str) -> dict[str, Any]:
    """The record of an AutoInterp task that did not run."""
    return {"eval_type_id": "autointerp", "skipped": reason}


def db_mismatch(db: str | Path, sae: SAE, sae_path: str, only_one: bool) -> str:
    """Why the database at `db` does not hold `sae`'s features ('' when it does): it must record the SAE's folder,
    or be the only SAE evaluated, and have its width."""
    with FeatureStore.open(db) as store:
        meta = store.meta
    recorded = str(meta.get("sae", ""))
    same = bool(recorded) and Path(recorded).resolve() == Path(sae_path).resolve()
    if str(meta.get("d_sae")) != str(sae.d_sae):
        return f"{db} holds {meta.get('d_sae')} features, this SAE has {sae.d_sae}"
    if not same and not only_one:
        return f"{db} was analysed from {recorded}, not this SAE"
    return ""


def autointerp(db: str | Path, explainer: Explainer, *, features: int = 10, examples: int = 10,
               score_examples: int = 10, seed: int = 0) -> dict[str, Any]:
    """Explain and score `features` random firing features of the database at `db` (module doc)."""
    start = time.perf_counter()
    details = []
    with FeatureStore.open(db) as store:
        alive = [r[0] for r in store.con.execute("SELECT id FROM features WHERE count > 0 ORDER BY id")]
        picked = sorted(random.Random(seed).sample(alive, min(features, len(alive))))
        for f in picked:
            exp = explain_feature(explainer, store.feature(f), examples=examples, score_examples=score_examples,
                                  seed=seed)
            details.append({"latent": f, "explanation": exp.text, "score": exp.score,
                            "score_lower": exp.score_lower, "error": exp.details.get("error")})
    scores = [d["score"] for d in details if d["score"] is not None]
    return {"eval_type_id": "autointerp",
            "eval_config": {"n_latents": features, "examples": examples, "score_examples": score_examples,
                            "random_seed": seed, "explainer": explainer.name, "scoring": "detection"},
            "eval_result_metrics": {"autointerp": {
                "autointerp_score": float(np.mean(scores)) if scores else float("nan"),
                "autointerp_std_dev": float(np.std(scores)) if scores else float("nan"),
                "scored_latents": len(scores)}},
            "eval_result_details": details, "seconds": round(time.perf_counter() - start, 2)}
