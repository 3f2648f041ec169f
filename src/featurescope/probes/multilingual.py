"""`featurescope multilingual`: score every feature's cross-lingual consistency on parallel text and store the
scores and aligned examples in the feature database (definitions in `featurescope.probes.crossling`)."""

from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

import numpy as np

from featurescope._version import __version__
from featurescope.config_fields import option
from featurescope.featuredb import probes as probe_tables
from featurescope.models import LanguageModel
from featurescope.probes.crossling import CrossLingual, aligned_examples, cross_lingual
from featurescope.probes.encode import EncodedTexts, decode_tokens, encode_texts
from featurescope.probes.parallel import (
    PARALLEL,
    Segment,
    bible_segments,
    load_parallel,
    parallel_languages,
    parse_langs,
)
from featurescope.probes.session import best_labels, open_session, require
from featurescope.sae import SAE

log = logging.getLogger(__name__)

DISTINCT = 0.5
"""A listed feature with same_token below this fires on different tokens in most language pairs."""


@dataclass
class MultilingualConfig:
    """Settings of `featurescope multilingual` (each field is also a `--flag`)."""

    db: str = option("", "feature database (from `featurescope analyze`); the scores are added to it")
    sae: str = option("", "SAE folder (default: the one the database records)")
    model: str = option("", "model (default: the one the database records)")
    langs: str = option("en,fr,de,es,zh", "languages, comma-separated (any with a Bible translation; the built-in "
                                          "parallel sentences cover en, fr, de, es, zh)")
    verses: int = option(200, "Bible verses aligned across the languages (0: none)")
    parallel: str = option("builtin", "parallel sentences: builtin (the project's), none, or a JSONL path")
    examples: int = option(3, "aligned examples stored per feature")
    max_density: float = option(0.05, "features firing on more of the corpus' tokens are never called cross-lingual")
    min_segments: int = option(3, "segments a feature must fire on in every language to be eligible")
    max_segment_fraction: float = option(0.5, "fraction of the segments a feature may fire on in any language")
    min_score: float = option(0.3, "score a feature needs (and above the shuffled-alignment maximum) to be listed")
    top_segments: int = option(10, "top segments per language used by the transfer rate")
    shuffles: int = option(5, "shuffled alignments for the chance level")
    max_tokens: int = option(128, "tokens kept per segment")
    batch_size: int = option(16, "segments per forward pass")
    seed: int = option(0, "seed of the verse sample and the shuffles")
    device: str = option("auto", "cpu, cuda or auto")


class MultilingualResult(NamedTuple):
    """What a run found: every listed feature (best first, with its aligned examples) and the run's numbers."""

    path: Path
    langs: list[str]
    segments: dict[str, int]
    eligible: int
    listed: int
    distinct: int
    """Listed features whose peak tokens differ across most language pairs (same_token < DISTINCT)."""
    null_max: float
    min_score: float
    top: list[probe_tables.MultilingualFeature]
    labels: dict[int, str]
    seconds: float


def check_config(cfg: MultilingualConfig) -> list[str]:
    """The languages, after checking every setting (one clear error per mistake)."""
    langs = parse_langs(cfg.langs)
    require(cfg.db, "no feature database given")
    require(cfg.verses >= 0, f"`verses` must be ≥ 0 (got {cfg.verses})", settings=("verses",))
    for name in ("examples", "min_segments", "top_segments", "max_tokens", "batch_size"):
        require(getattr(cfg, name) > 0, f"`{name}` must be positive (got {getattr(cfg, name)})", settings=(name,))
    require(cfg.shuffles >= 0, f"`shuffles` must be ≥ 0 (got {cfg.shuffles})", settings=("shuffles",))
    require(0 < cfg.max_segment_fraction <= 1, "`max_segment_fraction` must be in (0, 1]",
            settings=("max_segment_fraction",))
    require(0 < cfg.max_density <= 1, "`max_density` must be in (0, 1]", settings=("max_density",))
    return langs


def gather_segments(cfg: MultilingualConfig, langs: list[str]) -> tuple[list[Segment], list[str]]:
    """The aligned segments (parallel sentences first, then verses) and notices about what was left out."""
    notices: list[str] = []
    segments: list[Segment] = []
    if cfg.parallel == "builtin":
        missing = sorted(set(langs) - parallel_languages(PARALLEL))
        if missing:
            notices.append(f"the built-in parallel sentences have no {', '.join(missing)}: Bible verses only")
        else:
            segments += load_parallel(PARALLEL, langs)
    elif cfg.parallel != "none":
        segments += load_parallel(cfg.parallel, langs)
    segments += bible_segments(langs, cfg.verses, cfg.seed)
    require(segments, "no parallel text: give `verses` N or parallel sentences", settings=("verses",))
    require(len(segments) >= 2 * cfg.min_segments, f"only {len(segments)} aligned segments: too few to score "
            "features (raise `verses`)", settings=("verses",))
    return segments, notices


def _segment_rows(segments: list[Segment], langs: list[str], tokens: list[list[str]]) -> list[tuple]:
    return [(s, lang, seg.source, seg.ref, seg.texts[lang], json.dumps(tokens[s * len(langs) + li], ensure_ascii=False))
            for s, seg in enumerate(segments) for li, lang in enumerate(langs)]


def same_token_fraction(peaks: list[str]) -> float:
    """Fraction of the pairs of `peaks` (one peak token per language) that are the same string (case and
    surrounding spaces ignored)."""
    norm = [p.strip().casefold() for p in peaks]
    pairs = list(combinations(norm, 2))
    return sum(a == b for a, b in pairs) / len(pairs)


def _examples(acts: np.ndarray, enc: EncodedTexts, tokens: list[list[str]], langs: list[str], k: int
              ) -> tuple[list[tuple], dict[int, float]]:
    """Rows of multilingual_examples, and each feature's same-token fraction averaged over its examples."""
    order, valid = aligned_examples(acts, k)
    n_lang = len(langs)
    keys = [(int(order[r, f]), r, int(f)) for f in np.flatnonzero(valid[0]) for r in range(order.shape[0])
            if valid[r, f]]
    texts = [seg * n_lang + li for seg, _, _ in keys for li in range(n_lang)]
    feats = [f for _, _, f in keys for _ in range(n_lang)]
    token_acts = enc.token_acts_many(texts, feats)
    rows: list[tuple] = []
    same: dict[int, list[float]] = {}
    for j, (seg, rank, f) in enumerate(keys):
        peaks = []
        for li, lang in enumerate(langs):
            a = token_acts[j * n_lang + li]
            rows.append((f, rank, lang, seg, float(acts[seg, li, f]), probe_tables.floats_blob(a)))
            if max(a, default=0.0) > 0:
                peaks.append(tokens[seg * n_lang + li][int(np.argmax(a))])
        if len(peaks) > 1:
            same.setdefault(f, []).append(same_token_fraction(peaks))
    return rows, {f: float(np.mean(v)) for f, v in same.items()}


def _score_rows(cl: CrossLingual, langs: list[str], listed: set[int], same: dict[int, float]) -> list[tuple]:
    rows = []
    for f in range(len(cl.score)):
        pairs = {name: round(float(cl.pairs[p, f]), 6) for p, name in enumerate(cl.pair_names)}
        fired = {lang: int(cl.fired[li, f]) for li, lang in enumerate(langs)}
        transfer = None if np.isnan(cl.transfer[f]) else float(cl.transfer[f])
        rows.append((f, float(cl.score[f]), transfer, float(cl.base_rate[f]), int(cl.eligible[f]), int(f in listed),
                     json.dumps(pairs), json.dumps(fired), same.get(f)))
    return rows


def _meta(cfg: MultilingualConfig, langs: list[str], counts: dict[str, int], cl: CrossLingual, listed: int,
          distinct: int) -> dict[str, object]:
    volatile = ("db", "device")
    return {"langs": langs, "segments": counts, "settings": {k: v for k, v in asdict(cfg).items() if k not in volatile},
            "null_max": cl.null_max, "eligible": int(cl.eligible.sum()), "listed": listed, "distinct_tokens": distinct,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "featurescope_version": __version__}


def run_multilingual(cfg: MultilingualConfig, *, sae: SAE | None = None, model: LanguageModel | None = None,
                     progress: bool = True) -> MultilingualResult:
    """Encode the aligned segments in every language, score every feature, write the tables, and return the
    listed features."""
    t0 = time.perf_counter()
    langs = check_config(cfg)
    segments, notices = gather_segments(cfg, langs)
    for notice in notices:
        log.warning("featurescope multilingual: %s", notice)
    with open_session(cfg.db, sae=sae or cfg.sae, model=model or cfg.model, device=cfg.device) as s:
        texts = [seg.texts[lang] for seg in segments for lang in langs]
        enc = encode_texts(s.model, s.sae, texts, s.layer, batch_size=cfg.batch_size, max_tokens=cfg.max_tokens,
                           progress=progress, desc="multilingual")
        d = s.sae.cfg.d_sae
        acts = enc.max_per_text().numpy().reshape(len(segments), len(langs), d)
        density = s.store.densities().numpy()
        cl = cross_lingual(acts, langs, density, max_density=cfg.max_density, min_segments=cfg.min_segments,
                           max_segment_fraction=cfg.max_segment_fraction, top_segments=cfg.top_segments,
                           shuffles=cfg.shuffles, seed=cfg.seed)
        listed = [int(i) for i in cl.listed(cfg.min_score)]
        tokens = [decode_tokens(s.model, ids) for ids in enc.token_ids]
        ex_rows, same = _examples(acts, enc, tokens, langs, cfg.examples)
        scores = _score_rows(cl, langs, set(listed), same)
        seg_rows = _segment_rows(segments, langs, tokens)
        distinct = sum(same.get(f, 1.0) < DISTINCT for f in listed)
        counts = {src: sum(seg.source == src for seg in segments) for src in ("parallel", "bible")}
        meta = _meta(cfg, langs, counts, cl, len(listed), distinct)
        with probe_tables.update_db(cfg.db) as con:
            probe_tables.replace_multilingual(con, meta, scores, seg_rows, ex_rows)
        top = probe_tables.multilingual_top(cfg.db, len(listed))
        labels = best_labels(s.store, [f.feature for f in top])
    if len(segments) < 30:
        log.warning("featurescope multilingual: only %d aligned segments; scores are noisy", len(segments))
    return MultilingualResult(Path(cfg.db), langs, counts, int(cl.eligible.sum()), len(listed), distinct, cl.null_max,
                              cfg.min_score, top, labels, time.perf_counter() - t0)


def no_findings_message(result: MultilingualResult) -> str:
    """The sentence printed when no feature is listed."""
    return (f"no feature is cross-lingual by this test: of {result.eligible} eligible features none scored ≥ "
            f"{result.min_score:g} and above the shuffled-alignment maximum {result.null_max:.3f}")

