"""`featurescope eval --suite`: every offline task on one SAE, the texts encoded once (docs/evaluation.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from featurescope.analysis.explain import Explainer
from featurescope.evalsuite.absorption import absorption
from featurescope.evalsuite.autointerp import NOT_GIVEN, autointerp, skipped
from featurescope.evalsuite.causal import causal_language
from featurescope.evalsuite.datasets import LANGUAGES, code_vs_prose, language_id
from featurescope.evalsuite.sparse_probing import KS, check_ks, encode_dataset, probe_dataset, result
from featurescope.models import LanguageModel
from featurescope.sae import SAE


@dataclass(frozen=True)
class SuiteConfig:
    """Settings of the offline suite."""

    per_split: int = 40
    """Texts per class in train and in test."""
    languages: tuple[str, ...] = LANGUAGES
    ks: tuple[int, ...] = KS
    max_tokens: int = 64
    batch_size: int = 16
    multiple: float = 1.0
    """The causal task's clamp, × the feature's peak activation on its language's texts (docs/evaluation.md)."""
    controls: int = 3
    absorption_tokens: int = 30
    """The absorption task's word tokens per first letter (70% train, 30% test)."""
    autointerp_features: int = 10
    """Features AutoInterp explains and scores."""
    seed: int = 0


def run_suite(model: LanguageModel, sae: SAE, layer: int, cfg: SuiteConfig | None = None, *,
              explainer: Explainer | None = None, db: str = "", autointerp_skipped: str = "",
              progress: bool = False) -> dict[str, Any]:
    """The suite's results by task, each in SAEBench's layout: `sparse_probing`, `absorption_first_letter`,
    `causal_language` and `autointerp` (run with `explainer` on the SAE's feature database `db`, else a record
    that says why it was skipped: `autointerp_skipped` or `autointerp.NOT_GIVEN`)."""
    cfg = cfg or SuiteConfig()
    check_ks(cfg.ks)
    start = time.perf_counter()
    datasets = [language_id(cfg.languages, per_split=cfg.per_split, seed=cfg.seed),
                code_vs_prose(per_split=cfg.per_split, seed=cfg.seed)]
    details, encoded = [], {}
    for ds in datasets:
        train, test = encode_dataset(model, sae, layer, ds, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size,
                                     progress=progress)
        encoded[ds.name] = train
        details.append(probe_dataset(ds, train, test, ks=cfg.ks, seed=cfg.seed)[0])
    probing = result(details, cfg.ks, cfg.max_tokens, cfg.seed, time.perf_counter() - start)
    causal = causal_language(model, sae, layer, datasets[0], encoded["language_id"], multiple=cfg.multiple,
                             controls=cfg.controls, seed=cfg.seed)
    absorbed = absorption(model, sae, layer, per_letter=cfg.absorption_tokens, batch_size=4 * cfg.batch_size,
                          seed=cfg.seed)
    if explainer is not None and db and not autointerp_skipped:
        interp = autointerp(db, explainer, features=cfg.autointerp_features, seed=cfg.seed)
    else:
        interp = skipped(autointerp_skipped or NOT_GIVEN)
    return {"sparse_probing": probing, "absorption_first_letter": absorbed, "causal_language": causal,
            "autointerp": interp, "seconds": round(time.perf_counter() - start, 2)}
