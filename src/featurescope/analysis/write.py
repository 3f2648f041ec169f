"""Turn the accumulated state of an analysis into the rows of a feature database and write it."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from featurescope.analysis.contexts import EMPTY, window_start
from featurescope.analysis.feature_map import FeatureMap
from featurescope.analysis.labels import auto_label
from featurescope.analysis.logit_effects import LogitEffects
from featurescope.analysis.neighbours import Neighbours, unit_rows
from featurescope.analysis.state import Accumulators
from featurescope.featuredb.core import create_db
from featurescope.tokentext import is_whole, merge_pieces, readable

LABEL_CHUNK = 512


class Finished(NamedTuple):
    """Everything computed after the passes, ready to write."""

    acc: Accumulators
    context_ids: Tensor
    """[n] int64 sorted ids of every context an example refers to."""
    context_tokens: Tensor
    """[n, ctx_len] int32 their token ids."""
    token_texts: dict[int, str]
    logits: LogitEffects
    neighbours: Neighbours
    feature_map: FeatureMap | None
    w_dec: Tensor
    """[d_sae, d_in] decoder rows in raw units."""
    token_bytes: dict[int, bytes] | None = None
    """Each token's raw bytes (`featurescope.tokentext.token_bytes`); None: not recorded."""

    def display_texts(self) -> dict[int, str]:
        """Each token's text as labels show it (a lone byte token as `<0xNN>`)."""
        if self.token_bytes is None:
            return self.token_texts
        return {i: readable(b) for i, b in self.token_bytes.items()}


def referenced_contexts(acc: Accumulators) -> Tensor:
    """Sorted ids of the contexts that top, quantile and negative examples come from."""
    parts = [acc.top.context.flatten(), acc.negatives.context.flatten()]
    if acc.quantiles is not None:
        parts.append(acc.quantiles.context.flatten())
    ids = torch.cat([p.cpu() for p in parts])
    return torch.unique(ids[ids != EMPTY])


def _rows_of(fin: Finished, ctx: Tensor) -> Tensor:
    return torch.searchsorted(fin.context_ids, ctx.clamp_min(0).cpu())


def _windows(fin: Finished, ctx: Tensor, start: Tensor, window: int) -> Tensor:
    """Token ids [..., W] of the windows at `start` of contexts `ctx` (same shape)."""
    rows = _rows_of(fin, ctx)
    offsets = torch.arange(window)
    return fin.context_tokens[rows[..., None], start.cpu()[..., None] + offsets]


def _feature_rows(fin: Finished) -> Iterator[tuple[Any, ...]]:
    acc = fin.acc
    mean, std = acc.stats.mean_std()
    count = acc.stats.count.cpu().tolist()
    rows = max(acc.stats.rows, 1)
    maxes = acc.max.cpu().tolist()
    best = acc.top.ranked()[:, :1]
    ctx0 = acc.top.context.gather(1, best)[:, 0].cpu().tolist()
    pos0 = acc.top.position.gather(1, best)[:, 0].cpu().tolist()
    norms = fin.w_dec.norm(dim=1).tolist()
    for f, c in enumerate(count):
        fired = c > 0
        yield (f, c, c / rows, float(mean[f]) if fired else None, float(std[f]) if fired else None, maxes[f],
               ctx0[f] if fired else None, pos0[f] if fired else None, norms[f])


def _example_rows(fin: Finished) -> Iterator[tuple[Any, ...]]:
    acc = fin.acc
    T = fin.context_tokens.shape[1]
    W = acc.window
    top = acc.top
    order = top.ranked().cpu()
    valid = (top.context != EMPTY).cpu().gather(1, order)  # ranked: the valid slots come first
    f_idx, rank_idx = valid.nonzero(as_tuple=True)
    slot = order[f_idx, rank_idx]
    pos = top.position.cpu()[f_idx, slot]
    starts = window_start(pos, T, W).tolist()
    acts = top.acts.cpu()[f_idx, slot].numpy().astype("<f4")
    yield from zip(f_idx.tolist(), ["top"] * len(f_idx), [0] * len(f_idx), rank_idx.tolist(),
                   top.value.cpu()[f_idx, slot].tolist(), top.context.cpu()[f_idx, slot].tolist(), pos.tolist(),
                   starts, (a.tobytes() for a in acts), strict=True)
    q = acc.quantiles
    if q is not None:
        n, S = q.intervals, q.per_interval
        value = q.value.view(-1, n, S).cpu()
        ctx = q.context.view(-1, n, S).cpu()
        order = torch.where(ctx == EMPTY, -1.0, value).argsort(dim=2, descending=True)
        ranked_ctx = ctx.gather(2, order)
        f_idx, j_idx, rank_idx = (ranked_ctx != EMPTY).nonzero(as_tuple=True)
        slot = order[f_idx, j_idx, rank_idx]
        pos = q.position.view(-1, n, S).cpu()[f_idx, j_idx, slot]
        starts = window_start(pos, T, W).tolist()
        acts = q.acts.view(-1, n, S, W).cpu()[f_idx, j_idx, slot].numpy().astype("<f4")
        yield from zip(f_idx.tolist(), ["quantile"] * len(f_idx), j_idx.tolist(), rank_idx.tolist(),
                       value[f_idx, j_idx, slot].tolist(), ctx[f_idx, j_idx, slot].tolist(), pos.tolist(), starts,
                       (a.tobytes() for a in acts), strict=True)
    neg = acc.negatives
    zeros = np.zeros(W, dtype="<f4").tobytes()
    f_idx, slot = (neg.context != EMPTY).cpu().nonzero(as_tuple=True)
    starts = neg.position.cpu()[f_idx, slot].tolist()
    for f, s, c, start in zip(f_idx.tolist(), slot.tolist(), neg.context.cpu()[f_idx, slot].tolist(), starts,
                              strict=True):
        yield (f, "negative", 0, s, 0.0, c, start, start, zeros)


def _label_rows(fin: Finished) -> Iterator[tuple[Any, ...]]:
    acc = fin.acc
    d_sae = len(acc.top.value)
    W = acc.window
    T = fin.context_tokens.shape[1]
    token_freq = acc.stats.token_counts.double() / max(acc.stats.rows, 1)
    out_ids = fin.logits.top_tokens
    texts = fin.display_texts()
    raw = fin.token_bytes or {}
    for lo in range(0, d_sae, LABEL_CHUNK):
        hi = min(lo + LABEL_CHUNK, d_sae)
        top_ctx, top_pos = acc.top.context[lo:hi].cpu(), acc.top.position[lo:hi].cpu()
        peaks = fin.context_tokens[_rows_of(fin, top_ctx), top_pos]
        neg_ctx = acc.negatives.context[lo:hi].cpu()
        neg_win = _windows(fin, neg_ctx, acc.negatives.position[lo:hi].cpu(), W)
        if acc.quantiles is not None:
            q_ctx = acc.quantiles.context.view(d_sae, -1)[lo:hi].cpu()
            q_pos = acc.quantiles.position.view(d_sae, -1)[lo:hi].cpu()
            q_win = _windows(fin, q_ctx, window_start(q_pos, T, W), W)
        else:
            q_ctx, q_win = torch.full((hi - lo, 0), EMPTY), torch.zeros(hi - lo, 0, W, dtype=torch.int32)
        for i in range(hi - lo):
            valid = top_ctx[i] != EMPTY
            held_out = (q_ctx[i] != EMPTY) & ~torch.isin(q_ctx[i], top_ctx[i][valid])
            args = (peaks[i][valid].tolist(), token_freq, out_ids[lo + i].tolist())
            windows = (q_win[i][held_out], neg_win[i][neg_ctx[i] != EMPTY])
            label = auto_label(*args, texts, *windows)
            byte_inputs = [t for t in label.details["input_tokens"] if t in raw and not is_whole(raw[t])]
            if byte_inputs:  # a byte token at the peaks: name the character it is part of there
                chars = _peak_characters(fin, top_ctx[i][valid], top_pos[i][valid], peaks[i][valid], byte_inputs)
                label = auto_label(*args, {**texts, **chars}, *windows)
            yield (lo + i, "auto", label.text, label.score, json.dumps(label.details), label.score_lower)


def _peak_characters(fin: Finished, ctx: Tensor, pos: Tensor, peaks: Tensor, byte_ids: list[int]) -> dict[int, str]:
    """For each byte token of `byte_ids`: the character it is part of at the peaks (the most frequent one)."""
    assert fin.token_bytes is not None
    rows = _rows_of(fin, ctx).tolist()
    found: dict[int, Counter[str]] = {t: Counter() for t in byte_ids}
    for r, p, t in zip(rows, pos.tolist(), peaks.tolist(), strict=True):
        if t in found:
            seq = [fin.token_bytes.get(int(i), b"") for i in fin.context_tokens[r].tolist()]
            char = merge_pieces(seq, [0.0], p).texts[0]
            if char:
                found[t][char] += 1
    return {t: c.most_common(1)[0][0] for t, c in found.items() if c}


def token_ids_used(acc: Accumulators, context_tokens: Tensor, logits: LogitEffects) -> list[int]:
    """Every token id the database shows: in stored contexts and in logit effects."""
    ids = torch.cat([context_tokens.flatten().long(), logits.top_tokens.flatten(), logits.bottom_tokens.flatten()])
    return torch.unique(ids).tolist()


def write_db(path: Path, fin: Finished, meta: dict[str, Any], *, passes_seconds: float, started: float) -> None:
    """Write the whole feature database to `path` (atomically, in batched transactions); `meta` goes in last,
    with `seconds` and `timings` (the passes' time, and the finishing time since `started`, perf_counter)."""
    acc = fin.acc
    n_logit = fin.logits.top_tokens.shape[1]
    with create_db(path) as db:
        db.insert("features", ("id", "count", "density", "mean", "std", "max", "max_context", "max_position",
                               "decoder_norm"), _feature_rows(fin))
        if acc.hist is not None:
            maxes, counts = acc.max.cpu().tolist(), acc.hist.counts.cpu().tolist()
            db.insert("histograms", ("feature", "max", "counts"),
                      ((f, maxes[f], json.dumps(counts[f])) for f in range(len(maxes)) if maxes[f] > 0))
        db.insert("contexts", ("id", "tokens"),
                  zip(fin.context_ids.tolist(), (r.numpy().astype("<i4").tobytes() for r in fin.context_tokens),
                      strict=True))
        raw = fin.token_bytes or {}
        db.insert("tokens", ("id", "text", "bytes"), ((i, t, raw.get(i)) for i, t in sorted(fin.token_texts.items())))
        db.insert("examples", ("feature", "kind", "interval", "rank", "value", "context", "position", "start",
                               "acts"), _example_rows(fin))
        db.insert("logit_effects", ("feature", "sign", "rank", "token", "value"), _logit_rows(fin.logits, n_logit))
        nb = fin.neighbours
        db.insert("neighbours", ("feature", "rank", "other", "cosine"),
                  ((f, r, o, c) for f, (ids, cos) in enumerate(zip(nb.ids.tolist(), nb.cosine.tolist(), strict=True))
                   for r, (o, c) in enumerate(zip(ids, cos, strict=True))))
        if fin.feature_map is not None:
            db.insert("map", ("feature", "x", "y"), ((f, x, y) for f, (x, y) in enumerate(fin.feature_map.xy.tolist())))
        db.insert("labels", ("feature", "kind", "text", "score", "details", "score_lower"), _label_rows(fin))
        db.decoder(unit_rows(fin.w_dec))
        finish = time.perf_counter() - started
        db.meta({**meta, "seconds": passes_seconds + finish,
                 "timings": {"passes": passes_seconds, "finish": finish}})


def _logit_rows(logits: LogitEffects, n: int) -> Iterator[tuple[Any, ...]]:
    top_t, top_v = logits.top_tokens.tolist(), logits.top_values.tolist()
    bot_t, bot_v = logits.bottom_tokens.tolist(), logits.bottom_values.tolist()
    for f in range(len(top_t)):
        for r in range(n):
            yield (f, 1, r, top_t[f][r], top_v[f][r])
            yield (f, -1, r, bot_t[f][r], bot_v[f][r])

