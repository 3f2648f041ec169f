"""Streaming accumulators against brute force on synthetic codes: top contexts, quantile reservoirs,
non-firing windows, statistics, histograms, and an exact resume from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from featurescope.analysis.accumulate import (
    FeatureStats,
    Histograms,
    bin_index,
    codes_from_dense,
    context_peaks,
    lookup,
    windows,
)
from featurescope.analysis.contexts import EMPTY, NegativeWindows, QuantileSamples, TopContexts, window_start
from featurescope.analysis.source import Batch, _limit
from featurescope.analysis.state import Accumulators, load_info, load_tensors, save

_codes = codes_from_dense


def _stream(n_batches: int, C: int = 4, T: int = 16, F: int = 12, seed: int = 0) -> list[torch.Tensor]:
    """Sparse non-negative codes: each feature fires with its own density, some never."""
    g = torch.Generator().manual_seed(seed)
    density = torch.linspace(0.0, 0.5, F)
    out = []
    for _ in range(n_batches):
        fire = torch.rand(C, T, F, generator=g) < density
        out.append(torch.rand(C, T, F, generator=g).pow(2) * 10 * fire)
    return out


def test_sparse_codes_give_context_peaks_and_lookups():
    dense = _stream(1)[0]
    codes = _codes(dense)
    assert bool((codes.key[1:] > codes.key[:-1]).all())
    peak, arg = context_peaks(codes)
    assert torch.equal(peak, dense.max(dim=1).values)
    assert torch.equal(dense.gather(1, arg[:, None, :]).squeeze(1), peak)
    g = torch.Generator().manual_seed(5)
    c, p, f = (torch.randint(0, n, (500,), generator=g) for n in dense.shape)
    assert torch.equal(lookup(codes, c, p, f), dense[c, p, f])
    start = p.clamp(max=dense.shape[1] - 8)
    expected = torch.stack([dense[c[i], start[i]:start[i] + 8, f[i]] for i in range(500)])
    assert torch.equal(windows(codes, c, start, f, 8), expected)


def test_top_contexts_are_the_highest_peaks_with_their_windows():
    batches = _stream(30)
    top = TopContexts(12, k=5, window=8)
    for b, dense in enumerate(batches):
        top.update(torch.arange(b * 4, b * 4 + 4), _codes(dense))
    every = torch.cat(batches)  # [contexts, T, F]
    peaks = every.max(dim=1).values  # [contexts, F]
    for f in range(12):
        expected = peaks[:, f].sort(descending=True).values[:5]
        expected = expected[expected > 0]
        order = top.ranked()[f]
        got = top.value[f, order][top.context[f, order] != EMPTY]
        assert torch.equal(got, expected), f
        for s in order[: len(got)].tolist():
            c, p = int(top.context[f, s]), int(top.position[f, s])
            assert every[c, p, f] == top.value[f, s] == every[c, :, f].max()
            start = int(window_start(torch.tensor(p), 16, 8))
            assert torch.equal(top.acts[f, s], every[c, start:start + 8, f])
    assert (top.context[0] == EMPTY).all()  # feature 0 never fires


def test_window_start_keeps_the_window_inside_the_context():
    pos = torch.tensor([0, 3, 10, 127])
    assert window_start(pos, 128, 32).tolist() == [0, 0, 0, 96]
    assert window_start(torch.tensor([60]), 128, 32).tolist() == [36]  # 24 tokens before the position


def test_quantile_samples_fill_their_intervals_exactly():
    batches = _stream(25)
    every = torch.cat(batches)
    maxes = every.amax(dim=(0, 1))
    q = QuantileSamples(maxes, intervals=10, per_interval=3, window=8, generator=torch.Generator().manual_seed(1))
    hist = Histograms(maxes, bins=20)
    for b, dense in enumerate(batches):
        codes = _codes(dense)
        q.update(torch.arange(b * 4, b * 4 + 4), codes)
        hist.update(codes)
    for f in range(12):
        v = every[..., f][every[..., f] > 0]
        for j in range(10):
            slots = q.context.view(12, 10, 3)[f, j] != EMPTY
            in_interval = (bin_index(v, maxes[f].expand_as(v), 10) == j).sum()
            assert int(slots.sum()) == min(3, int(in_interval)), (f, j)
            for s in slots.nonzero().flatten().tolist():
                value = float(q.value.view(12, 10, 3)[f, j, s])
                lo, hi = j * float(maxes[f]) / 10, (j + 1) * float(maxes[f]) / 10
                assert lo * (1 - 1e-6) <= value <= hi * (1 + 1e-6)
                c, p = int(q.context.view(12, 10, 3)[f, j, s]), int(q.position.view(12, 10, 3)[f, j, s])
                assert float(every[c, p, f]) == value
        expected_hist = torch.bincount(bin_index(v, maxes[f].expand_as(v), 20), minlength=20)
        assert torch.equal(hist.counts[f], expected_hist)


def test_quantile_samples_leave_out_the_top_contexts():
    """Excluded (feature, context) pairs are never sampled; each interval fills from the other contexts."""
    batches = _stream(25)
    every = torch.cat(batches)
    maxes = every.amax(dim=(0, 1))
    g = torch.Generator().manual_seed(3)
    exclude = torch.randint(0, 100, (12, 6), generator=g)
    exclude[:, -1] = EMPTY
    q = QuantileSamples(maxes, intervals=10, per_interval=3, window=8, generator=torch.Generator().manual_seed(1),
                        exclude=exclude)
    for b, dense in enumerate(batches):
        q.update(torch.arange(b * 4, b * 4 + 4), _codes(dense))
    for f in range(12):
        allowed = torch.ones(100, dtype=torch.bool)
        allowed[exclude[f][exclude[f] != EMPTY]] = False
        v = every[allowed][..., f]
        v = v[v > 0]
        ctx = q.context.view(12, 10, 3)[f]
        assert not torch.isin(ctx[ctx != EMPTY], exclude[f]).any()
        for j in range(10):
            in_interval = int((bin_index(v, maxes[f].expand_as(v), 10) == j).sum())
            assert int((ctx[j] != EMPTY).sum()) == min(3, in_interval), (f, j)
    assert "exclude" not in q.state_dict()


def test_quantile_reservoir_is_uniform():
    """Each of 40 firing tokens, streamed in 5 batches, is kept with probability per_interval / 40."""
    dense = torch.ones(8, 1, 1)  # a batch: 8 one-token contexts, all in the single interval
    runs, kept = 2000, torch.zeros(40)
    for seed in range(runs):
        q = QuantileSamples(torch.ones(1), intervals=1, per_interval=4, window=1,
                            generator=torch.Generator().manual_seed(seed))
        for b in range(5):
            q.update(torch.arange(b * 8, b * 8 + 8), _codes(dense))
        ids = q.context.view(-1)
        assert len(set(ids.tolist())) == 4
        kept[ids] += 1
    assert torch.allclose(kept / runs, torch.full((40,), 0.1), atol=0.025), kept / runs


def test_negative_windows_never_fire_and_respect_the_token_budget():
    batches = _stream(10, T=32)
    neg = NegativeWindows(12, n=6, window=8, generator=torch.Generator().manual_seed(0))
    for b, dense in enumerate(batches):
        length = torch.full((4,), 32)
        if b == 9:
            length[3] = 20  # the last context was cut by the budget after 20 positions
        neg.update(torch.arange(b * 4, b * 4 + 4), length, _codes(dense))
    every = torch.cat(batches)
    for f in range(12):
        for s in range(6):
            c, start = int(neg.context[f, s]), int(neg.position[f, s])
            if c == EMPTY:
                continue
            assert start % 8 == 0
            assert (every[c, start:start + 8, f] == 0).all()
            assert not (c == 39 and start + 8 > 20)
    assert (neg.context[0] != EMPTY).all()  # feature 0 never fires: every window qualifies


def test_feature_stats_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    stats = FeatureStats(12, 3, vocab=50)
    all_x, all_codes, all_tokens = [], [], []
    for dense in _stream(6):
        tokens = torch.randint(0, 50, (4, 16), generator=g)
        x = torch.randn(64, 3, generator=g)
        batch = Batch(torch.arange(4), tokens, torch.ones(4, 16, dtype=torch.bool), torch.full((4,), 16), x)
        stats.update(batch, _codes(dense), x * 0.5)
        all_x.append(x)
        all_codes.append(dense.reshape(-1, 12))
        all_tokens.append(tokens.flatten())
    f = torch.cat(all_codes).double()
    x = torch.cat(all_x).double()
    assert torch.equal(stats.count, (f > 0).sum(0))
    mean, std = stats.mean_std()
    expected_mean = f.sum(0) / (f > 0).sum(0)
    assert torch.allclose(mean[1:], expected_mean[1:])
    assert torch.isnan(mean[0])
    fired = f[:, 5][f[:, 5] > 0]
    assert std[5] == pytest.approx(float(fired.std(unbiased=False)), rel=1e-6)
    q = stats.quality()
    assert q["fvu"] == pytest.approx(float((0.25 * x.pow(2).sum()) / (x - x.mean(0)).pow(2).sum()), rel=1e-9)
    assert q["l0"] == pytest.approx(float((f > 0).sum() / len(f)))
    assert torch.equal(stats.token_counts, torch.bincount(torch.cat(all_tokens), minlength=50))


def test_limit_cuts_after_the_budget():
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 0] = False  # BOS
    cut, length = _limit(mask, 6)
    assert int(cut.sum()) == 6
    assert length.tolist() == [5, 3, 1]  # context 1 stops after its 2nd token; context 2 is past the budget


def test_checkpoint_resume_is_exact(tmp_path):
    """Accumulators saved mid-stream and restored give the same result as an uninterrupted run."""
    batches = _stream(12)

    def fresh() -> Accumulators:
        return Accumulators(12, 3, 50, top_k=4, intervals=5, per_interval=2, negatives=3, window=8, bins=10,
                            seed=3, device=torch.device("cpu"))

    def feed(acc: Accumulators, part: list[torch.Tensor], first: int, pass_no: int) -> None:
        for b, dense in enumerate(part):
            ids = torch.arange((first + b) * 4, (first + b) * 4 + 4)
            codes = _codes(dense)
            if pass_no == 1:
                acc.top.update(ids, codes)
                acc.negatives.update(ids, torch.full((4,), 16), codes)
            else:
                acc.hist.update(codes)
                acc.quantiles.update(ids, codes)

    whole = fresh()
    feed(whole, batches, 0, 1)
    whole.start_pass2()
    feed(whole, batches, 0, 2)

    part = fresh()
    feed(part, batches[:5], 0, 1)
    save(tmp_path, {"pass": 1}, part)
    resumed = fresh()
    resumed.load(load_tensors(tmp_path, load_info(tmp_path)))
    feed(resumed, batches[5:], 5, 1)
    resumed.start_pass2()
    feed(resumed, batches[:7], 0, 2)
    save(tmp_path, {"pass": 2}, resumed)
    again = fresh()
    again.load(load_tensors(tmp_path, load_info(tmp_path)))
    feed(again, batches[7:], 7, 2)
    for key, value in whole.tensors().items():
        assert torch.equal(value, again.tensors()[key]), key
    assert len(list(tmp_path.glob("state-*.safetensors"))) == 1
