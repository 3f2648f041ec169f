"""`featurescope eval --suite`: every offline task on one SAE, the texts encoded once (docs/evaluation.md)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from featurescope.evalsuite.causal import causal_language
from featurescope.evalsuite.datasets import LANGUAGES, code_vs_prose, language_id
from featurescope.evalsuite.sparse_probing import KS, check_ks, encode_dataset, probe_dataset, result
from featurescope.models import LanguageModel
from featurescope.sae import SAE

AUTOINTERP_SKIPPED = ("AutoInterp needs an explainer model behind an OpenAI-compatible endpoint; "
                      "`featurescope explain DB --explainer URL` writes LLM labels with detection scores")


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
    seed: int = 0


def run_suite(model: LanguageModel, sae: SAE, layer: int, cfg: SuiteConfig | None = None, *,
              progress: bool = False) -> dict[str, Any]:
    """The suite's results by task: `sparse_probing` (SAEBench's layout), `causal_language`, and `autointerp`
    (skipped, with the reason)."""
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
    return {"sparse_probing": probing, "causal_language": causal,
            "autointerp": {"eval_type_id": "autointerp", "skipped": AUTOINTERP_SKIPPED},
            "seconds": round(time.perf_counter() - start, 2)}
