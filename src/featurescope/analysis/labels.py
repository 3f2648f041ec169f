"""LLM-free labels and the detection score shared by every kind of label.

A label is scored by detection on held-out windows: positives are the quantile samples (firing tokens
from every interval of [0, max]) whose contexts are not among the top contexts the label was made from,
negatives are windows where the feature never fires. A predictor built from the label says which windows
fire; the score is its balanced accuracy (0.5 = chance, 1 = perfect), with AUROC when it gives graded scores.

A label is scored only with at least MIN_POSITIVES positives and MIN_NEGATIVES negatives (else its score is
None), and labels are ranked by the score's lower 95% confidence bound (`score_lower`: the mean of the
Wilson lower bounds of the true-positive and the true-negative rate), so a perfect score on 3 windows does
not outrank 0.9 on 40.

The LLM-free label names the tokens most over-represented at the feature's peaks against the corpus
(counted over its top contexts): `River, Sea`. Its top output tokens (logit effects) follow after "→"
only where they agree with those input tokens (the same word, or one a prefix of the other, 3+ letters,
case-insensitive): `river → rivers`; promoted tokens unrelated to what the feature fires on are left out
of the text (they stay in the details). `(various)` means no input token stands out; such a label has no
predictor and is not scored. Its predictor fires on any window containing one of the input tokens.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

MAX_INPUT_TOKENS = 3
MAX_OUTPUT_TOKENS = 3
MIN_LIFT = 2.0
"""An input token must be at least this many times more frequent at peaks than in the corpus."""
MIN_POSITIVES = 10
"""Held-out firing windows a label needs to be scored."""
MIN_NEGATIVES = 5
"""Non-firing windows a label needs to be scored."""
Z95 = 1.959964


class Detection(NamedTuple):
    """How well a predictor tells firing windows from non-firing ones."""

    balanced_accuracy: float
    auroc: float
    tpr: float
    tnr: float
    positives: int
    negatives: int


def auroc(scores: Sequence[float], truth: Sequence[bool]) -> float:
    """Area under the ROC curve (Mann–Whitney U with ties counted half)."""
    s = torch.tensor(scores, dtype=torch.float64)
    t = torch.tensor(truth, dtype=torch.bool)
    pos, neg = s[t], s[~t]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def detection_score(scores: Sequence[float], truth: Sequence[bool], threshold: float = 0.5) -> Detection | None:
    """Balanced accuracy of `scores >= threshold` against `truth`, and AUROC; None without both classes."""
    if len(scores) != len(truth):
        raise ValueError(f"{len(scores)} scores for {len(truth)} examples")
    t = torch.tensor(list(truth), dtype=torch.bool)
    pred = torch.tensor(list(scores), dtype=torch.float64) >= threshold
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    tpr = float((pred & t).sum()) / n_pos
    tnr = float((~pred & ~t).sum()) / n_neg
    return Detection((tpr + tnr) / 2, auroc(scores, truth), tpr, tnr, n_pos, n_neg)


def wilson_lower(successes: float, n: int, z: float = Z95) -> float:
    """The Wilson score interval's lower bound for a proportion `successes` / `n` (0 when n is 0)."""
    if n <= 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


def score_lower(det: Detection) -> float:
    """Lower 95% bound of a balanced accuracy: the mean of the Wilson lower bounds of its TPR and TNR."""
    return (wilson_lower(det.tpr * det.positives, det.positives)
            + wilson_lower(det.tnr * det.negatives, det.negatives)) / 2


def label_score(det: Detection | None) -> tuple[float | None, float | None]:
    """(score, its lower bound) of a detection, or (None, None) with fewer than MIN_POSITIVES / MIN_NEGATIVES."""
    if det is None or det.positives < MIN_POSITIVES or det.negatives < MIN_NEGATIVES:
        return None, None
    return det.balanced_accuracy, score_lower(det)


def show_token(text: str) -> str:
    """A token as shown in a label: stripped, or escaped if it is only whitespace."""
    stripped = text.strip()
    return stripped if stripped else json.dumps(text)[1:-1] or "∅"


def over_represented(peaks: Sequence[int], token_freq: Tensor) -> list[tuple[int, int, float]]:
    """(token, count, lift) of the peak tokens over-represented against the corpus, most telling first.

    `token_freq[t]` is token t's frequency among the analysed tokens; the lift is (count / len(peaks)) /
    frequency; tokens are ranked by count · log(lift) (their share of the KL divergence).
    """
    n = len(peaks)
    if n == 0:
        return []
    min_count = 1 if n < 4 else max(2, math.ceil(0.1 * n))
    out = []
    for t, c in Counter(peaks).items():
        freq = float(token_freq[t]) if 0 <= t < len(token_freq) else 0.0
        lift = (c / n) / max(freq, 1e-12)
        if c >= min_count and lift >= MIN_LIFT:
            out.append((t, c, lift))
    out.sort(key=lambda x: (-x[1] * math.log(x[2]), x[0]))
    return out[:MAX_INPUT_TOKENS]


class AutoLabel(NamedTuple):
    """An LLM-free label, its score (balanced accuracy, None if unscored), how it was made, and the score's
    lower 95% bound."""

    text: str
    score: float | None
    details: dict[str, Any]
    score_lower: float | None = None


def _norm(text: str) -> str:
    return text.strip().lower()


def agrees(output: str, inputs: Sequence[str]) -> bool:
    """Whether an output token is the same word as an input token, or one is a prefix of the other (3+ letters)."""
    o = _norm(output)
    for i in map(_norm, inputs):
        short, long = sorted((o, i), key=len)
        if short and (short == long or (len(short) >= 3 and long.startswith(short))):
            return True
    return False


def label_text(inputs: Sequence[str], outputs: Sequence[str]) -> str:
    """`in1, in2 → out1, out2`; `(various)` when no input token stands out."""
    left = ", ".join(dict.fromkeys(show_token(t) for t in inputs)) if inputs else "(various)"
    right = ", ".join(dict.fromkeys(show_token(t) for t in outputs))
    return f"{left} → {right}" if right else left


def auto_label(peaks: Sequence[int], token_freq: Tensor, outputs: Sequence[int], texts: dict[int, str],
               positives: Tensor, negatives: Tensor) -> AutoLabel:
    """Label one feature from the token ids at its top contexts' peaks and its top output tokens, scored on
    held-out windows `positives` [p, W] and `negatives` [q, W] (token ids)."""
    chosen = over_represented(peaks, token_freq)
    inputs = [t for t, _, _ in chosen]
    outputs = list(outputs[:MAX_OUTPUT_TOKENS])
    in_texts = [texts.get(t, "") for t in inputs]
    shown = [t for t in outputs if agrees(texts.get(t, ""), in_texts)]
    text = label_text(in_texts, [texts.get(t, "") for t in shown])
    windows = torch.cat([positives.long(), negatives.long()])
    pred = torch.isin(windows, torch.tensor(inputs, dtype=torch.long)).any(1) if len(windows) else torch.zeros(0)
    truth = [True] * len(positives) + [False] * len(negatives)
    det = detection_score(pred.double().tolist(), truth) if inputs else None
    score, lower = label_score(det)
    details: dict[str, Any] = {
        "input_tokens": inputs, "output_tokens": outputs, "shown_output_tokens": shown,
        "peak_counts": [c for _, c, _ in chosen], "peaks": len(peaks),
        "lift": [round(lift, 2) for _, _, lift in chosen],
    }
    if det is not None:
        details["detection"] = det._asdict()
    if score is None:
        details["unscored"] = ("no input token stands out" if not inputs else
                               f"fewer than {MIN_POSITIVES} held-out positives or {MIN_NEGATIVES} negatives")
    else:
        details["score_lower"] = lower
    return AutoLabel(text, score, details, lower)
