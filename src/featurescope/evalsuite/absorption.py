"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"; SAEBench's
`absorption_first_letter`, whose field names and thresholds this follows).

1. **Tokens**: single-word tokens of the model's own vocabulary: a leading-space marker (`▁` or `Ġ`) then ASCII
   letters only (at least `min_chars`), up to `per_letter` per first letter (seeded sample), split 70/30 into
   train and test tokens. Letters with fewer than `min_per_letter` such tokens are left out.
2. **Residual**: each token after the fixed prefix `PREFIX` (BOS, the prefix's tokens, then the token id itself,
   so the word stays one token); the residual after block `layer` at the word. Later prompt text could not
   change it (causal attention), so SAEBench's suffix `" has the first letter:"` is left off.
3. **Probe**: a multinomial logistic regression on the standardised train residuals; a letter's probe direction
   is the normal of its decision function in residual units. Its **true positives** are the test tokens it
   assigns to their own letter.
4. **Main features** per letter (k-sparse probing): SAE features ranked by how much more their mean activation
   is on the letter's train tokens than on the others'; a class-balanced logistic regression on the top k
   (k = 1 … `max_k`) scores test F1; k grows while F1 gains more than `f1_jump_threshold`. That k is the
   letter's `num_split_features`, its top k features the main ones.
5. **Absorption** on each true positive, with the probe direction p (unit) and a feature's projection = its
   activation × (its decoder row · p) in residual units (SAEBench: activation × cosine, for unit decoder rows):
   - *full absorption*: no main feature fires, the feature with the largest projection has cosine ≥ 0.025 with p,
     and its projection is ≥ 0.4 of the residual's projection on p;
   - *absorption fraction*: 0 when the main features' projection covers the residual's or the top 3 other
     features with cosine ≥ 0.1 cover < 0.4 of it; 1 when the main features project ≤ 0; else the share of the
     probe projection those absorbers carry next to the main features'.
   `full_absorption_rate` = full absorptions / true positives (SAEBench); `absorption_rate` = full absorptions /
   true positives on which no main feature fires (Chanin et al.'s rate: when the main features miss, how often
   another aligned feature took over).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel
from featurescope.sae import SAE

PREFIX = "The first letter of the word"
SPACE_MARKERS = ("▁", "Ġ")
EPS = 1e-8
FULL_COS = 0.025
"""Full absorption: the top projecting feature's cosine with the probe is at least this (SAEBench)."""
FRACTION_COS = 0.1
"""Absorption fraction: a potential absorber's cosine with the probe is at least this (SAEBench)."""
PROPORTION = 0.4
"""Both: the absorbers carry at least this share of the residual's probe projection (SAEBench)."""
MAX_ABSORBERS = 3


class LetterTokens(NamedTuple):
    """Word tokens with their first letters (index into `letters`), split into train and test."""

    letters: list[str]
    train_ids: list[int]
    train_y: list[int]
    test_ids: list[int]
    test_y: list[int]


class Absorbed(NamedTuple):
    """Per true-positive token of one letter: absorption fraction, full absorption, main features silent."""

    fraction: np.ndarray
    full: np.ndarray
    silent: np.ndarray


def alpha_tokens(model: LanguageModel, min_chars: int = 3) -> dict[str, list[int]]:
    """First letter → ids of the vocabulary's single-word tokens (module doc, step 1), sorted."""
    tok = model.tokenizer
    by_letter: dict[str, list[int]] = {}
    for piece, i in tok.get_vocab().items():
        if not piece or piece[0] not in SPACE_MARKERS:
            continue
        word = piece[1:]
        if len(word) >= min_chars and word.isascii() and word.isalpha():
            by_letter.setdefault(word[0].lower(), []).append(int(i))
    return {k: sorted(v) for k, v in sorted(by_letter.items())}


def letter_tokens(model: LanguageModel, *, per_letter: int = 30, min_per_letter: int = 10, letters: str = "",
                  seed: int = 0, test_share: float = 0.3) -> LetterTokens:
    """The task's tokens (module doc, step 1), of the first `letters` given (default: every letter)."""
    rng = random.Random(seed)
    kept: list[str] = []
    tr, ytr, te, yte = [], [], [], []
    for letter, ids in alpha_tokens(model).items():
        if len(ids) < min_per_letter or (letters and letter not in letters):
            continue
        pick = rng.sample(ids, min(per_letter, len(ids)))
        n_test = max(1, round(test_share * len(pick)))
        c = len(kept)
        kept.append(letter)
        te += pick[:n_test]
        yte += [c] * n_test
        tr += pick[n_test:]
        ytr += [c] * (len(pick) - n_test)
    if len(kept) < 2:
        raise FeaturescopeError(f"{model.name}'s vocabulary has too few single-word tokens for the first-letter task")
    return LetterTokens(kept, tr, ytr, te, yte)


@torch.inference_mode()
def word_residuals(model: LanguageModel, layer: int, ids: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """The residual after block `layer` at each word token placed after `PREFIX` [n, d_model] (float32)."""
    head = ([] if model.bos_id is None else [model.bos_id])
    head += list(model.tokenizer(PREFIX, add_special_tokens=False)["input_ids"])
    out = []
    for s in range(0, len(ids), batch_size):
        batch = torch.tensor([[*head, i] for i in ids[s:s + batch_size]], dtype=torch.long)
        out.append(model.residual(batch, layer)[:, -1].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.d_model), np.float32)


class Probe(NamedTuple):
    """The letter probe: its test predictions and each letter's direction in the residual space [letters, d]."""

    predicted: np.ndarray
    directions: np.ndarray


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0) -> Probe:
    """The letter probe (module doc, step 3): a logistic regression on standardised residuals; a letter's
    direction is the normal of its decision function in raw units (weights ÷ the scaler's deviations)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    probe = LogisticRegression(max_iter=1000, random_state=seed)
    probe.fit((x_train - mean) / std, y_train)
    coef = probe.coef_ if probe.coef_.shape[0] > 1 else np.vstack([-probe.coef_, probe.coef_])  # 2 letters: 1 row
    return Probe(probe.predict((x_test - mean) / std), coef / std)


def split_features(acts_train: np.ndarray, y_train: np.ndarray, acts_test: np.ndarray, y_test: np.ndarray, *,
                   max_k: int = 10, f1_jump_threshold: float = 0.03, seed: int = 0) -> tuple[list[int], list[float]]:
    """The main features of a binary task (module doc, step 4) and the test F1 at k = 1, 2, … up to the first k
    whose F1 gains no more than `f1_jump_threshold` (at most `max_k`)."""
    diff = acts_train[y_train == 1].mean(0) - acts_train[y_train == 0].mean(0)
    ranked = np.argsort(-diff, kind="stable")[:max_k]
    f1s: list[float] = []
    for k in range(1, len(ranked) + 1):
        cols = ranked[:k]
        scale = acts_train[:, cols].std(0) + 1e-6
        clf = LogisticRegression(solver="liblinear", class_weight="balanced", random_state=seed)
        clf.fit(acts_train[:, cols] / scale, y_train)
        f1s.append(float(f1_score(y_test, clf.predict(acts_test[:, cols] / scale), zero_division=0.0)))
        if k > 1 and f1s[-1] - f1s[-2] <= f1_jump_threshold:
            return [int(f) for f in ranked[:k - 1]], f1s
    return [int(f) for f in ranked], f1s


def absorbed(resid: np.ndarray, acts: np.ndarray, dec: np.ndarray, probe: np.ndarray, main: Sequence[int]) -> Absorbed:
    """Absorption of each row (true positives of one letter; module doc, step 5). `dec` [d_sae, d_model]: the
    decoder rows in residual units; `probe`: the letter's probe direction."""
    p = probe / np.linalg.norm(probe)
    along = dec @ p
    cos = along / np.maximum(np.linalg.norm(dec, axis=1), EPS)
    proj = acts * along  # each feature's projection on p, per row
    total = resid @ p
    others = np.ones(dec.shape[0], dtype=bool)
    others[list(main)] = False
    fraction, full, silent = [], [], []
    for r in range(len(resid)):
        main_proj = float(proj[r, list(main)].sum())
        cand = proj[r][others & (cos >= FRACTION_COS) & (proj[r] > 0)]
        absorbers = float(np.sort(cand)[::-1][:MAX_ABSORBERS].sum())
        t = float(total[r])
        if t <= 0 or main_proj >= t or absorbers / t < PROPORTION:
            frac = 0.0
        elif main_proj <= 0:
            frac = 1.0
        else:
            part = min(absorbers, t - main_proj)
            frac = float(np.clip(part / (part + main_proj), 0.0, 1.0))
        quiet = bool((acts[r, list(main)] < EPS).all())
        top = int(np.argmax(proj[r]))
        fraction.append(frac)
        silent.append(quiet)
        full.append(quiet and t > 0 and cos[top] >= FULL_COS and proj[r, top] / t >= PROPORTION)
    return Absorbed(np.array(fraction), np.array(full, dtype=bool), np.array(silent, dtype=bool))


def _std(values: Sequence[float]) -> float:
    return float(np.std(values)) if values else float("nan")


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


@torch.inference_mode()
def _encode(sae: SAE, x: np.ndarray, device: torch.device) -> np.ndarray:
    return sae.encode(torch.from_numpy(x).to(device)).float().cpu().numpy()


def absorption(model: LanguageModel, sae: SAE, layer: int, *, per_letter: int = 30, letters: str = "",
               max_k: int = 10, f1_jump_threshold: float = 0.03, batch_size: int = 64, seed: int = 0) -> dict[str, Any]:
    """The first-letter absorption record (module doc), in SAEBench's `absorption_first_letter` layout."""
    start = time.perf_counter()
    sae.to(model.device)
    task = letter_tokens(model, per_letter=per_letter, letters=letters, seed=seed)
    x_train = word_residuals(model, layer, task.train_ids, batch_size)
    x_test = word_residuals(model, layer, task.test_ids, batch_size)
    y_train, y_test = np.array(task.train_y), np.array(task.test_y)
    probe = fit_probe(x_train, y_train, x_test, seed)
    predicted = probe.predicted
    a_train, a_test = _encode(sae, x_train, model.device), _encode(sae, x_test, model.device)
    dec = (sae.W_dec.detach().float() / sae.input_scale.float()).cpu().numpy()
    details: list[dict[str, Any]] = []
    for c, letter in enumerate(task.letters):
        main, f1s = split_features(a_train, (y_train == c).astype(int), a_test, (y_test == c).astype(int),
                                   max_k=max_k, f1_jump_threshold=f1_jump_threshold, seed=seed)
        tp = np.flatnonzero((y_test == c) & (predicted == c))
        got = absorbed(x_test[tp], a_test[tp], dec, probe.directions[c], main)
        n_full, n_silent = int(got.full.sum()), int(got.silent.sum())
        details.append({"first_letter": letter, "mean_absorption_fraction": _mean(got.fraction.tolist()),
                        "full_absorption_rate": n_full / len(tp) if len(tp) else float("nan"),
                        "num_full_absorption": n_full, "num_probe_true_positives": len(tp),
                        "num_split_features": len(main), "split_features": main,
                        "num_main_features_silent": n_silent,
                        "absorption_rate": n_full / n_silent if n_silent else float("nan"),  # undefined
                        "k_sparse_f1": [round(f, 4) for f in f1s]})
    scored = [d for d in details if d["num_probe_true_positives"]]
    fractions = [d["mean_absorption_fraction"] for d in scored]
    fulls = [d["full_absorption_rate"] for d in scored]
    splits = [d["num_split_features"] for d in details]
    return {"eval_type_id": "absorption_first_letter",
            "eval_config": {"prompt_template": PREFIX + "{word}", "max_k_value": max_k,
                            "f1_jump_threshold": f1_jump_threshold, "random_seed": seed,
                            "tokens_per_letter": per_letter, "train_tokens": len(task.train_ids),
                            "test_tokens": len(task.test_ids)},
            "eval_result_metrics": {"mean": {
                "mean_absorption_fraction_score": _mean(fractions), "mean_full_absorption_score": _mean(fulls),
                "mean_num_split_features": _mean(splits), "std_dev_absorption_fraction_score": _std(fractions),
                "std_dev_full_absorption_score": _std(fulls), "std_dev_num_split_features": _std(splits),
                "mean_absorption_rate": _mean([d["absorption_rate"] for d in scored if d["num_main_features_silent"]]),
                "probe_test_accuracy": float((predicted == y_test).mean())}},
            "eval_result_details": details, "seconds": round(time.perf_counter() - start, 2)}
