"""`featurescope monitor`: flag texts on which chosen features fire above a threshold calibrated for a stated
false-positive rate, one JSON line out per text in, as the texts arrive.

Score of a text: s = max over the watched features j and the text's tokens t of a_j(t) / m_j, with m_j feature
j's max activation over the analysed corpus (the database). The threshold τ is the split-conformal quantile of
s over the calibration negatives (`stats.conformal_threshold`): the negatives of the probe set's calibration
part (`stats.split_parts`), which `featurescope probe` never looks at — neither to find the features (discovery)
nor to validate and pick them (held-out AUROC). A text is flagged when s > τ; its triggers are the tokens where
some watched feature exceeds τ·m_j. For a new text drawn like the calibration negatives, P(flagged) ≤ fpr.

Exit status: 0 no text flagged, 1 at least one flagged, 2 an error (bad settings, empty input, or any input
line that could not be read; such lines are answered with an `error` record and the others still run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

import numpy as np

from featurescope.config_fields import option
from featurescope.errors import FeaturescopeError
from featurescope.featuredb import probes as probe_tables
from featurescope.models import LanguageModel
from featurescope.probes.encode import decode_tokens, encode_texts
from featurescope.probes.session import open_session, parse_features, require
from featurescope.probes.sets import ProbeSet, ProbeText, arrays, load_probe_set
from featurescope.probes.stats import DEFAULT_CALIBRATION, conformal_threshold, min_negatives, split_parts
from featurescope.sae import SAE
from featurescope.terminal import dumps

log = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "text")


@dataclass
class MonitorConfig:
    """Settings of `featurescope monitor` (each field is also a `--flag`)."""

    db: str = option("", "feature database", required=True)
    sae: str = option("", "SAE folder (default: the one the database records)")
    model: str = option("", "model (default: the one the database records)")
    features: str = option("", "feature ids to watch, comma-separated (default: the best feature `featurescope probe` "
                               "reported for each category of --set)")
    all_reported: bool = option(False, "watch every reported feature, not only the best of each category")
    set: str = option("safety", "probe set whose calibration part's negatives calibrate the threshold")
    category: str = option("", "only this category: its reported features and its negatives")
    fpr: float = option(0.05, "target false-positive rate on texts like the calibration negatives")
    input: str = option("-", "file to read, JSONL ({\"text\": ...} per line) or plain lines; - is stdin")
    format: str = option("auto", "input lines: jsonl, text, or auto (JSON when a line starts with {)",
                         choices=FORMATS)
    max_tokens: int = option(512, "tokens read per text (the rest is ignored and the record says truncated)")
    triggers: int = option(5, "triggering tokens listed per feature")
    device: str = option("auto", "cpu, cuda or auto")


class Watch(NamedTuple):
    """The watched features, their scale m_j, category (if reported for one) and the calibrated threshold."""

    features: list[int]
    scale: np.ndarray
    categories: dict[int, str]
    threshold: float
    negatives: int
    heldout_tpr: float | None
    """Fraction of the calibration part's positives flagged (None when there are none)."""


def input_lines(stream: IO[str]) -> Iterator[tuple[int, str]]:
    """(line number, line) of the non-blank lines, read one at a time (works on a live pipe)."""
    for n, line in enumerate(iter(stream.readline, ""), 1):
        if line.strip():
            yield n, line.rstrip("\n")


def parse_line(line: str, fmt: str) -> tuple[str, Any]:
    """(text, id or None) of one input line; a malformed JSON line, bytes that are not UTF-8 or a lone
    surrogate raise FeaturescopeError."""
    _require_utf8(line, "the line is not valid UTF-8")
    if fmt == "text" or (fmt == "auto" and not line.lstrip().startswith("{")):
        return line, None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise FeaturescopeError(f"not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise FeaturescopeError("expected a JSON object with a string \"text\"")
    if not obj["text"].strip():
        raise FeaturescopeError("empty \"text\"")
    _require_utf8(json.dumps(obj, ensure_ascii=False), "the JSON holds a lone surrogate (\\ud800-\\udfff)")
    return obj["text"], obj.get("id")


def _require_utf8(text: str, message: str) -> None:
    """Raise FeaturescopeError(message) if `text` cannot be written as UTF-8 (undecodable bytes read with
    errors="surrogateescape", or a lone surrogate from a JSON escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FeaturescopeError(message) from None


def best_of_categories(rows: list[Any]) -> list[Any]:
    """The row of highest held-out AUROC in each category (rows with `category` and `heldout_auroc`)."""
    best: dict[str, Any] = {}
    for r in rows:
        if r.category not in best or r.heldout_auroc > best[r.category].heldout_auroc:
            best[r.category] = r
    return list(best.values())


def choose_features(cfg: MonitorConfig, store: Any, probe_set: ProbeSet) -> tuple[list[int], dict[int, str]]:
    """The features to watch and the category each was reported for."""
    if cfg.features:
        features = parse_features(cfg.features, store.d_sae)
        require(features, "`features` names no feature", settings=("features",))
        cats: dict[int, str] = {f: r.category for f in features for r in probe_tables.probes_for_feature(store, f)
                if r.reported and r.probe_set == probe_set.name}
        return features, cats
    rows = probe_tables.reported_features(store, probe_set.name, cfg.category or None)
    if not rows:
        what = f"category {cfg.category!r} of " if cfg.category else ""
        raise FeaturescopeError(f"no feature was reported for {what}probe set {probe_set.name!r} in {store.path.name}"
                                f" (run `featurescope probe {store.path.name} --set {cfg.set}` first, or give "
                                "`features`)", settings=("features",))
    if not cfg.all_reported:
        rows = best_of_categories(rows)
    cats = {}
    for r in rows:
        cats.setdefault(r.feature, r.category)
    return list(cats), cats


def calibration_parts(meta: dict[str, Any], *, chosen_by_probe: bool) -> tuple[float, float, int]:
    """(heldout, calibration, seed) of the stored probe run's split (defaults when there is none); a run of an
    older version, which had no calibration part, cannot calibrate the features it chose itself."""
    if meta and "calibration" not in meta and chosen_by_probe:
        raise FeaturescopeError("the stored probe run predates the calibration part (its held-out texts chose the "
                                "features): re-run `featurescope probe`, or give `features`",
                                settings=("features",))
    calibration = float(meta.get("calibration", DEFAULT_CALIBRATION))
    if calibration == 0:
        if chosen_by_probe:
            raise FeaturescopeError("the stored probe run set no texts aside for calibration (`calibration` 0): "
                                    "re-run `featurescope probe` with `calibration` above 0, or give `features`",
                                    settings=("calibration", "features"))
        calibration = DEFAULT_CALIBRATION  # features chosen by the user: any part of the texts can calibrate
    return float(meta.get("heldout", 0.5)), calibration, int(meta.get("seed", 0))


def calibration_texts(cfg: MonitorConfig, store: Any, probe_set: ProbeSet) -> list[ProbeText]:
    """The calibration part's texts (both labels) of the calibration categories, split as the probe run stored
    in `store` split them."""
    meta = probe_tables.get_meta(store.con, f"probe:{probe_set.name}") or {}
    heldout, calibration, seed = calibration_parts(meta, chosen_by_probe=not cfg.features)
    cats = [cfg.category] if cfg.category else probe_set.categories
    out: list[ProbeText] = []
    for c in cats:
        items = probe_set.category(c)
        labels, groups = arrays(items)
        mask = split_parts(groups, labels, heldout, calibration, seed).calibration
        out += [t for t, m in zip(items, mask, strict=True) if m]
    return out


def text_scores(model: LanguageModel, sae: SAE, layer: int, texts: list[str], features: list[int],
                scale: np.ndarray, max_tokens: int) -> np.ndarray:
    """s of each text (module doc), [n]."""
    enc = encode_texts(model, sae, texts, layer, max_tokens=max_tokens)
    return (enc.max_per_text().numpy()[:, features] / scale).max(axis=1)


def calibrate(cfg: MonitorConfig, s: Any, probe_set: ProbeSet) -> Watch:
    """Choose the features and calibrate τ on the calibration part's negatives."""
    features, cats = choose_features(cfg, s.store, probe_set)
    corpus_max = s.store.max_activations().numpy()[features].astype(np.float64)
    dead = [f for f, m in zip(features, corpus_max, strict=True) if m <= 0]
    if dead:
        raise FeaturescopeError(f"feature {dead[0]} never fired in the analysed corpus; it cannot be monitored")
    held = calibration_texts(cfg, s.store, probe_set)
    negatives = [t.text for t in held if t.label == 0]
    need = min_negatives(cfg.fpr)
    require(len(negatives) >= need, f"`fpr` {cfg.fpr:g} needs at least {need} calibration negatives; the "
            f"calibration part has {len(negatives)} (raise `fpr` or use a larger probe set)",
            settings=("fpr",))
    scores = text_scores(s.model, s.sae, s.layer, [t.text for t in held], features, corpus_max, cfg.max_tokens)
    labels = np.array([t.label for t in held])
    tau = conformal_threshold(scores[labels == 0], cfg.fpr)
    tpr = float((scores[labels == 1] > tau).mean()) if (labels == 1).any() else None
    return Watch(features, corpus_max, cats, tau, len(negatives), tpr)


def check_text(model: LanguageModel, sae: SAE, layer: int, watch: Watch, text: str, max_tokens: int,
               n_triggers: int) -> dict[str, Any]:
    """The record of one text: its score, whether it is flagged, and the features and tokens that triggered."""
    enc = encode_texts(model, sae, [text], layer, max_tokens=max_tokens)
    tokens = enc.token_ids[0]
    acts = np.array(enc.token_acts_many([0] * len(watch.features), watch.features)).reshape(len(watch.features), -1)
    rel = acts / watch.scale[:, None]
    score = float(rel.max()) if rel.size else 0.0
    fired = []
    for j, f in enumerate(watch.features):
        over = np.flatnonzero(rel[j] > watch.threshold)
        if not len(over):
            continue
        over = over[np.argsort(-acts[j, over], kind="stable")][:n_triggers]
        strings = decode_tokens(model, [tokens[p] for p in over])
        fired.append({"feature": f, "category": watch.categories.get(f), "max": float(acts[j].max()),
                      "relative": float(rel[j].max()), "threshold": float(watch.threshold * watch.scale[j]),
                      "triggers": [{"position": int(p), "token": t, "act": float(acts[j, p])}
                                   for p, t in zip(over, strings, strict=True)]})
    return {"flagged": bool(fired), "score": score, "threshold": watch.threshold, "tokens": len(tokens),
            "truncated": enc.truncated[0], "features": fired}


def run_monitor(cfg: MonitorConfig, stdin: IO[str] | None = None, stdout: IO[str] | None = None, *,
                sae: SAE | None = None, model: LanguageModel | None = None, quiet: bool = False) -> int:
    """Read texts, write one JSON record per text, return the exit status (module doc); unless `quiet`, log
    (INFO) what is watched and the threshold."""
    stdout = stdout or sys.stdout
    require(0 < cfg.fpr < 1, f"`fpr` must be between 0 and 1 (got {cfg.fpr})", settings=("fpr",))
    require(cfg.max_tokens > 0 and cfg.triggers >= 0, "`max_tokens` must be positive and `triggers` ≥ 0",
            settings=("max_tokens", "triggers"))
    require(cfg.format in FORMATS, f"unknown `format` {cfg.format!r}; choose one of {', '.join(FORMATS)}",
            settings=("format",))
    probe_set = load_probe_set(cfg.set)
    if cfg.category:
        probe_set.category(cfg.category)
    from featurescope.featuredb.core import FeatureStore

    with FeatureStore.open(cfg.db) as store:  # check the database and the features before reading any input
        choose_features(cfg, store, probe_set)
    stream = (stdin or sys.stdin) if cfg.input == "-" else _open_input(cfg.input)
    try:
        return _monitor_stream(cfg, stream, stdout, probe_set, sae=sae, model=model, quiet=quiet)
    finally:
        if cfg.input != "-":
            stream.close()


def _monitor_stream(cfg: MonitorConfig, stream: IO[str], stdout: IO[str], probe_set: ProbeSet, *,
                    sae: SAE | None, model: LanguageModel | None, quiet: bool) -> int:
    lines = input_lines(stream)
    first = next(lines, None)
    if first is None:
        raise FeaturescopeError("no input: " + ("stdin is empty" if cfg.input == "-" else f"{cfg.input} holds no text"))
    flagged = errors = 0
    with open_session(cfg.db, sae=sae or cfg.sae, model=model or cfg.model, device=cfg.device) as s:
        watch = calibrate(cfg, s, probe_set)
        if not quiet:
            tpr = "" if watch.heldout_tpr is None else f", flags {watch.heldout_tpr:.0%} of its positives"
            log.info("featurescope monitor: watching %d feature(s) %s; threshold %.3f × max activation, calibrated "
                     "on %d unused negatives for FPR ≤ %g%s", len(watch.features), watch.features, watch.threshold,
                     watch.negatives, cfg.fpr, tpr)
        for n, line in _chain(first, lines):
            try:
                text, ident = parse_line(line, cfg.format)
                record = {"line": n, **({"id": ident} if ident is not None else {}),
                          **check_text(s.model, s.sae, s.layer, watch, text, cfg.max_tokens, cfg.triggers)}
                flagged += record["flagged"]
            except FeaturescopeError as e:
                record = {"line": n, "error": str(e)}
                errors += 1
            try:
                stdout.write(dumps(record) + "\n")  # C1 controls escaped too (featurescope.terminal)
                stdout.flush()
            except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
                _silence(stdout)
                break
    return 2 if errors else 1 if flagged else 0


def _silence(stdout: IO[str]) -> None:
    """Point the process' stdout at /dev/null so that the interpreter's final flush does not fail again."""
    import os

    if stdout is sys.stdout:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _chain(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


def _open_input(path: str) -> IO[str]:
    try:
        return open(path, encoding="utf-8", errors="surrogateescape")  # bad bytes: an error on that line
    except OSError as e:
        raise FeaturescopeError(f"{path}: cannot read ({e.strerror})") from None
