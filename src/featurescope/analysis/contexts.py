"""Per-feature bounded example sets, merged batch by batch with vectorised top-k (memory O(d_sae × K)).

- `TopContexts`: the K contexts where each feature's activation peaks highest (one entry per context).
- `QuantileSamples`: for each of n equal-width intervals of [0, max], a uniform sample of m firing tokens
  (SAEDashboard's 10 × 5) from contexts that are not among the feature's top contexts (so the samples
  never repeat a top example). Each candidate gets a random key and each (feature, interval) keeps the m
  smallest keys — a reservoir that merges with top-k. Needs each feature's max and top contexts, so it
  runs in a second pass.
- `NegativeWindows`: a uniform sample of fixed windows on which the feature does not fire at all.

Top and quantile entries keep the feature's activations over a window of W tokens around their position,
taken when the entry is inserted, so no context has to be re-encoded later.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featurescope.analysis.accumulate import Codes, bin_index, context_peaks, windows

EMPTY = -1
"""Context id of an empty slot."""


def window_start(pos: Tensor, ctx_len: int, window: int) -> Tensor:
    """First position of the W-token window shown around `pos`: 3/4 of it before, kept inside the context."""
    return (pos - (3 * window) // 4).clamp(min=0).clamp(max=ctx_len - window)


def gather_windows(codes: Codes, c: Tensor, start: Tensor, f: Tensor, window: int) -> Tensor:
    """Activations of feature f[i] over positions start[i] … start[i] + W − 1 of context c[i]: [n, W]."""
    return windows(codes, c, start, f, window)


class _Slots:
    """Per-feature slots [d_sae, S] of (value, context, position) plus, optionally, a window of activations."""

    def __init__(self, d_sae: int, slots: int, window: int, device: torch.device | str, windows: bool) -> None:
        self.window = window
        self.value = torch.zeros(d_sae, slots, device=device)
        self.context = torch.full((d_sae, slots), EMPTY, dtype=torch.int64, device=device)
        self.position = torch.zeros(d_sae, slots, dtype=torch.int64, device=device)
        self.acts = torch.zeros(d_sae, slots, window if windows else 0, device=device)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k, v in state.items():
            setattr(self, k, v.to(self.value.device))


def free_slots(kept: Tensor, rows: Tensor) -> Tensor:
    """Slots for new entries: the i-th new entry of row r gets the i-th slot of r not in `kept` [R, S].

    `rows` [n] (ascending) names each new entry's row; each row must have enough free slots.
    """
    free = ~kept
    rank = free.long().cumsum(1) - 1
    R, S = kept.shape
    slot_of_rank = torch.zeros(R, S, dtype=torch.int64, device=kept.device)
    fr, fs = free.nonzero(as_tuple=True)
    slot_of_rank[fr, rank[fr, fs]] = fs
    first = torch.searchsorted(rows, rows)
    return slot_of_rank[rows, torch.arange(len(rows), device=rows.device) - first]


class TopContexts(_Slots):
    """The K contexts with the highest peak activation of each feature (slots unordered; see `ranked`).

    A feature's entries move only when replaced: each batch, the contexts whose peak beats a feature's
    lowest entry compete with its K entries, and the winners take the slots of the entries they beat.
    """

    def __init__(self, d_sae: int, k: int, window: int, device: torch.device | str = "cpu") -> None:
        super().__init__(d_sae, k, window, device, windows=True)
        self.k = k

    def ranked(self) -> Tensor:
        """[d_sae, K] slot order, highest value first (empty slots last)."""
        return torch.where(self.context == EMPTY, -1.0, self.value).argsort(dim=1, descending=True, stable=True)

    @torch.inference_mode()
    def update(self, contexts: Tensor, codes: Codes) -> None:
        K, W, T = self.k, self.window, codes.shape[1]
        peak, arg = context_peaks(codes)  # [C, F]
        low = self.value.min(dim=1).values
        rows = (low[:, None] < peak.T).any(1).nonzero().squeeze(1)
        if not len(rows):
            return
        cand = torch.cat([self.value[rows], peak.T[rows]], dim=1)
        sel = cand.topk(K, dim=1).indices
        kept = torch.zeros(len(rows), K + 1, dtype=torch.bool, device=sel.device)
        kept.scatter_(1, sel.clamp(max=K), True)
        new = (sel >= K) & (cand.gather(1, sel) > 0)
        r, j = new.nonzero(as_tuple=True)
        slot = free_slots(kept[:, :K], r)
        f, c = rows[r], sel[r, j] - K
        pos = arg[c, f]
        self.value[f, slot] = peak[c, f]
        self.context[f, slot] = contexts.to(c.device)[c]
        self.position[f, slot] = pos
        self.acts[f, slot] = gather_windows(codes, c, window_start(pos, T, W), f, W)


class QuantileSamples(_Slots):
    """`per_interval` uniformly sampled firing tokens in each of `intervals` equal-width intervals of [0, max],
    leaving out the contexts in each feature's row of `exclude` [d_sae, K] (its top contexts; EMPTY = none)."""

    def __init__(self, max_act: Tensor, intervals: int, per_interval: int, window: int,
                 generator: torch.Generator, exclude: Tensor | None = None) -> None:
        d_sae = len(max_act)
        super().__init__(d_sae * intervals, per_interval, window, max_act.device, windows=True)
        self.max = max_act.float()
        self.exclude = None if exclude is None else exclude.to(max_act.device)
        self.intervals, self.per_interval = intervals, per_interval
        self.key = torch.full((d_sae * intervals, per_interval), float("inf"), device=max_act.device)
        self.generator = generator

    @torch.inference_mode()
    def update(self, contexts: Tensor, codes: Codes) -> None:
        n, S = self.intervals, self.per_interval
        group = codes.feat * n + bin_index(codes.value, self.max[codes.feat], n)
        key = torch.rand(len(group), generator=self.generator, device=self.generator.device).to(self.key.device)
        sel = key < self.key.max(dim=1).values[group]
        if self.exclude is not None:  # tokens of a feature's own top contexts are no candidates
            idx = sel.nonzero().squeeze(1)
            ctx_ids = contexts.to(idx.device)[codes.ctx[idx]]
            sel[idx[(self.exclude[codes.feat[idx]] == ctx_ids[:, None]).any(1)]] = False
        group, key, cand = group[sel], key[sel], sel.nonzero().squeeze(1)
        if not len(group):
            return
        touched, local = torch.unique(group, return_inverse=True)
        G = len(touched)
        # the S current slots of every touched group, then the new candidates; keep the S smallest keys per group
        all_group = torch.cat([torch.arange(G, device=key.device).repeat_interleave(S), local])
        all_key = torch.cat([self.key[touched].flatten(), key])
        order = all_key.argsort()
        order = order[all_group[order].argsort(stable=True)]
        g_sorted = all_group[order]
        counts = torch.bincount(all_group, minlength=G)
        rank = torch.arange(len(order), device=key.device) - (torch.cumsum(counts, 0) - counts)[g_sorted]
        keep = rank < S
        order, g_sorted = order[keep], g_sorted[keep]
        is_old = order < G * S
        kept = torch.zeros(G, S, dtype=torch.bool, device=key.device)
        kept[g_sorted[is_old], order[is_old] % S] = True
        gn = g_sorted[~is_old]
        slot = free_slots(kept, gn)
        j = cand[order[~is_old] - G * S]
        c, p, f = codes.ctx[j], codes.pos[j], codes.feat[j]
        rows = touched[gn]
        self.key[rows, slot] = all_key[order[~is_old]]
        self.value[rows, slot] = codes.value[j]
        self.context[rows, slot] = contexts.to(c.device)[c]
        self.position[rows, slot] = p
        self.acts[rows, slot] = gather_windows(codes, c, window_start(p, codes.shape[1], self.window), f, self.window)

    def state_dict(self) -> dict[str, Tensor]:
        state = super().state_dict()
        state.pop("max")
        state.pop("exclude", None)
        return state


class NegativeWindows(_Slots):
    """For each feature, `n` windows (W tokens at multiples of W) sampled uniformly among those where it never fires."""

    def __init__(self, d_sae: int, n: int, window: int, generator: torch.Generator) -> None:
        device = generator.device
        super().__init__(d_sae, n, window, device, windows=False)
        self.n = n
        self.key = torch.full((d_sae, n), float("inf"), device=device)
        self.generator = generator

    @torch.inference_mode()
    def update(self, contexts: Tensor, length: Tensor, codes: Codes) -> None:
        C, T, F = codes.shape
        n, W = self.n, self.window
        per = T // W
        if per == 0:
            return
        device = self.key.device
        fired = torch.zeros(C * per, F, dtype=torch.bool, device=device)
        inside = codes.pos < per * W
        fired[(codes.ctx * per + codes.pos // W)[inside], codes.feat[inside]] = True
        ends = (torch.arange(per, device=device) + 1) * W
        cut = (ends[None, :] > length.to(device)[:, None]).reshape(C * per, 1)
        key = torch.rand(C * per, F, generator=self.generator, device=self.generator.device).to(device)
        key = torch.where(fired | cut, float("inf"), key)
        top = torch.cat([self.key, key.T], dim=1).topk(n, dim=1, largest=False)
        rows = ((top.indices >= n) & torch.isfinite(top.values)).any(1).nonzero().squeeze(1)
        if not len(rows):
            return
        idx = top.indices[rows]
        old = idx < n
        keep_old = idx.clamp(max=n - 1)
        w = (idx - n).clamp(min=0)
        context = torch.where(old, self.context[rows].gather(1, keep_old), contexts.to(device)[w // per])
        position = torch.where(old, self.position[rows].gather(1, keep_old), (w % per) * W)
        context[torch.isinf(top.values[rows])] = EMPTY
        self.key[rows], self.context[rows], self.position[rows] = top.values[rows], context, position
