"""`analyze` on the embedded model's activations, checked against brute force; the feature database API;
resume after an interruption; bad inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from featurescope.activations import ActivationStore
from featurescope.analysis import AnalyzeConfig, analyze
from featurescope.analysis import pipeline as analyze_module
from featurescope.analysis.contexts import window_start
from featurescope.analysis.labels import MIN_NEGATIVES, MIN_POSITIVES, agrees, detection_score, wilson_lower
from featurescope.analysis.search import search_text
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore
from featurescope.sae import SAE, SAEConfig
from featurescope.tokentext import merge_pieces, text_has_words
from featurescope.train import TrainConfig, train

K, INTERVALS, PER_INTERVAL, WINDOW = 8, 10, 3, 16


def _config(sae, out, store, **kw) -> AnalyzeConfig:
    base = dict(sae=str(sae), out=str(out), activations=str(store), map="pca", top_k=K, intervals=INTERVALS,
                per_interval=PER_INTERVAL, window=WINDOW, negatives=5, checkpoint_seconds=0)
    return AnalyzeConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def analysed(gemma, small_store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis")
    sae_dir = train(TrainConfig(activations=str(small_store), out=str(tmp / "sae"), features=256, k=8,
                                batch_size=500, epochs=2), progress=False).path
    result = analyze(_config(sae_dir, tmp / "f.db", small_store), model=gemma, progress=False)
    return result, sae_dir


@pytest.fixture(scope="module")
def reference(analysed, small_store):
    """Every context's dense SAE activations [contexts, T, d_sae], tokens and mask, by brute force."""
    sae = SAE.load(analysed[1])
    store = ActivationStore(small_store)
    dense, tokens, masks = [], [], []
    with torch.inference_mode():
        for i in range(len(store.shards)):
            d = store.read_shard(i)
            full = torch.zeros(*d.mask.shape, sae.d_sae)
            full[d.mask] = sae.encode(d.acts.float())
            dense.append(full)
            tokens.append(d.tokens.long())
            masks.append(d.mask)
    return torch.cat(dense), torch.cat(tokens), torch.cat(masks)


def test_top_contexts_are_where_the_sae_fires_highest(analysed, reference):
    dense, tokens, _ = reference
    peaks = dense.max(dim=1).values  # [contexts, F]
    with FeatureStore.open(analysed[0].path) as store:
        assert store.meta["tokens"] == 3000 and store.d_sae == 256
        for f in range(256):
            top = store.examples(f, "top")
            raw = store.token_bytes({t for e in top for t in tokens[e.context].tolist()})
            expected = peaks[:, f].sort(descending=True).values[:K]
            expected = expected[expected > 0]
            assert len(top) == len(expected), f
            got = torch.tensor([e.value for e in top])
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5), f
            for e in top:
                assert dense[e.context, e.position, f] == pytest.approx(e.value, rel=1e-4, abs=1e-5)
                assert e.start == int(window_start(torch.tensor(e.position), 128, WINDOW))
                assert e.token_ids == tokens[e.context, e.start:e.start + WINDOW].tolist()
                merged = merge_pieces([raw[t] for t in tokens[e.context].tolist()],
                                      dense[e.context, e.start:e.start + WINDOW, f].tolist(), e.start)
                assert torch.allclose(torch.tensor(e.acts), torch.tensor(merged.acts), rtol=1e-4, atol=1e-5)
                assert e.tokens == merged.texts and "\ufffd" not in "".join(e.tokens)
                assert len(e.tokens) == WINDOW and all(isinstance(t, str) for t in e.tokens)


def test_quantile_samples_lie_in_their_intervals(analysed, reference):
    dense, _, _ = reference
    with FeatureStore.open(analysed[0].path) as store:
        maxes = store.max_activations()
        assert torch.allclose(maxes, dense.amax(dim=(0, 1)), rtol=1e-4)
        checked = 0
        for f in range(0, 256, 3):
            m = float(maxes[f])
            top = {e.context for e in store.examples(f, "top")}
            others = dense[[c for c in range(len(dense)) if c not in top], :, f]  # the top contexts are left out
            v = others[others > 0]
            bins = torch.floor(v.double() * INTERVALS / m).long().clamp(max=INTERVALS - 1)
            samples = store.examples(f, "quantile")
            assert not {e.context for e in samples} & top
            for j in range(INTERVALS):
                inside = [e for e in samples if e.interval == j]
                assert len(inside) == min(PER_INTERVAL, int((bins == j).sum())), (f, j)
                for e in inside:
                    assert j * m / INTERVALS * (1 - 1e-5) <= e.value <= (j + 1) * m / INTERVALS * (1 + 1e-5)
                    assert dense[e.context, e.position, f] == pytest.approx(e.value, rel=1e-4, abs=1e-6)
                    checked += 1
        assert checked > 300  # fewer than with the top contexts: those are left out


def test_statistics_histograms_and_negatives_match_brute_force(analysed, reference):
    dense, _, mask = reference
    with FeatureStore.open(analysed[0].path) as store:
        for f in range(0, 256, 5):
            v = dense[..., f][mask]
            feat = store.feature(f)
            s = feat.stats
            assert s.count == int((v > 0).sum())
            assert s.density == pytest.approx(float((v > 0).float().mean()))
            if s.count:
                assert s.mean == pytest.approx(float(v[v > 0].mean()), rel=1e-4)
                assert sum(feat.histogram.counts) == s.count and len(feat.histogram.counts) == 50
                assert s.max == feat.top[0].value == feat.histogram.max
            for e in feat.negatives:
                assert (dense[e.context, e.start:e.start + WINDOW, f] == 0).all()
                assert e.start % WINDOW == 0 and set(e.acts) == {0.0}
        q = store.meta["quality"]
        assert q["l0"] == pytest.approx(8.0, abs=0.05) and 0 < q["fvu"] < 1
        assert store.meta["sae_metrics"]["l0"] == pytest.approx(8.0, abs=0.1)


def test_logit_effects_and_neighbours_in_the_database(analysed, gemma):
    sae = SAE.load(analysed[1])
    u = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    direct = ((1 + gemma.final_norm.weight.detach()) * u[:8]) @ gemma.unembed.detach().T
    sims = u @ u.T
    sims.fill_diagonal_(-2)
    with FeatureStore.open(analysed[0].path) as store:
        for f in range(8):
            feat = store.feature(f)
            top = direct[f].topk(10)
            assert [e.token for e in feat.positive_logits] == top.indices.tolist()
            assert torch.allclose(torch.tensor([e.value for e in feat.positive_logits]), top.values, rtol=1e-4)
            assert [e.token for e in feat.negative_logits] == direct[f].topk(10, largest=False).indices.tolist()
            assert feat.positive_logits[0].text == gemma.tokenizer.decode([feat.positive_logits[0].token])
            nearest = sims[f].topk(10)
            assert [n.feature for n in feat.neighbours] == nearest.indices.tolist()
            assert torch.allclose(torch.tensor([n.cosine for n in feat.neighbours]), nearest.values, atol=1e-5)
            wide = store.neighbours(f, n=15)  # beyond the stored ten: from the float16 directions
            assert [n.feature for n in wide][:5] == nearest.indices[:5].tolist()
            assert feat.map_xy is not None and all(0 <= c <= 1 for c in feat.map_xy)


def test_auto_labels_name_over_represented_peak_tokens_and_are_scored(analysed, small_store):
    acts = ActivationStore(small_store)
    store_tokens = torch.cat([d.tokens.long()[d.mask] for d in map(acts.read_shard, range(len(acts.shards)))])
    freq = torch.bincount(store_tokens, minlength=262144).double() / len(store_tokens)
    scored = 0
    with FeatureStore.open(analysed[0].path) as store:
        for f in range(256):
            feat = store.feature(f)
            if feat.stats.count == 0:
                continue
            (label,) = [lb for lb in feat.labels if lb.kind == "auto"]
            peaks = [e.token_ids[e.position - e.start] for e in feat.top]
            for t in label.details["input_tokens"]:
                share = peaks.count(t) / len(peaks)
                assert peaks.count(t) >= (1 if len(peaks) < 4 else 2) and share / float(freq[t]) >= 2.0
            inputs = [store.token_texts([t])[t] for t in label.details["input_tokens"]]
            shown = label.details["shown_output_tokens"]  # promoted tokens appear only when they agree
            assert all(agrees(store.token_texts([t])[t], inputs) for t in shown)
            assert ("→" in label.text) == bool(shown)
            seen = {e.context for e in feat.top}
            positives = [e for e in feat.quantiles if e.context not in seen]
            assert len(positives) == len(feat.quantiles)  # quantile samples never come from top contexts
            windows = positives + feat.negatives
            pred = [float(any(t in label.details["input_tokens"] for t in e.token_ids)) for e in windows]
            det = detection_score(pred, [True] * len(positives) + [False] * len(feat.negatives))
            if det is None or not inputs or len(positives) < MIN_POSITIVES or len(feat.negatives) < MIN_NEGATIVES:
                assert label.score is None and label.score_lower is None and label.details["unscored"]
            else:
                assert label.score == pytest.approx(det.balanced_accuracy)
                lower = (wilson_lower(det.tpr * len(positives), len(positives))
                         + wilson_lower(det.tnr * len(feat.negatives), len(feat.negatives))) / 2
                assert label.score_lower == pytest.approx(lower) and label.score_lower < label.score
                scored += 1
            assert label.text and "\ufffd" not in label.text
        assert scored > 50
        best = store.top(by="label-score", n=20)
        lows = [r.score_lower for r in best if r.score_lower is not None]
        assert lows == sorted(lows, reverse=True) and best[0].label and best[0].score_lower is not None
        word = best[0].label.split(",")[0].split(" ")[0]
        found = store.search_labels(word)
        assert best[0].id in [r.id for r in found] or len(found) == 20
        assert all(text_has_words(r.label, word) for r in found)


def test_feature_store_api_and_bad_ids(analysed):
    with FeatureStore.open(analysed[0].path) as store:
        assert store.meta["format"] == "featurescope.features" and store.meta["layer"] == 9
        assert store.meta["model"] == "default"
        maxes = store.max_activations()
        assert maxes.shape == (256,) and maxes.dtype == torch.float32
        by_max = store.top(by="max", n=5)
        assert [r.max for r in by_max] == sorted(maxes.tolist(), reverse=True)[:5]
        dens = store.top(by="density", n=256, ascending=True)
        assert [r.density for r in dens] == sorted(r.density for r in dens)
        for bad in (256, -1, 10**9):
            with pytest.raises(FeaturescopeError, match="out of range"):
                store.feature(bad)
        with pytest.raises(FeaturescopeError, match="cannot order"):
            store.top(by="colour")
        with pytest.raises(FeaturescopeError, match="empty search text"):
            store.search_labels("  ")


def test_unreadable_or_foreign_databases_are_refused(tmp_path):
    (tmp_path / "noise.db").write_bytes(b"this is not sqlite at all" * 40)
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.commit()
    con = sqlite3.connect(tmp_path / "foreign.db")
    con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('format', '\"someone.else\"')")
    con.commit()
    for name, message in (("noise.db", "not a featurescope feature database"),
                          ("other.db", "not a featurescope feature database"),
                          ("foreign.db", "someone.else"), ("missing.db", "no such feature database")):
        with pytest.raises(FeaturescopeError, match=message):
            FeatureStore.open(tmp_path / name)


def _table_dump(path) -> dict[str, list]:
    con = sqlite3.connect(path)
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'meta'")]
    dump = {t: con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}
    con.close()
    return dump


class _Interrupt(Exception):
    pass


def test_interrupted_analysis_resumes_to_the_same_database(analysed, gemma, small_store, tmp_path, monkeypatch):
    """Stopped in pass 1, then in pass 2, then while writing: the reruns end with the uninterrupted database."""
    cfg = _config(analysed[1], tmp_path / "f.db", small_store, checkpoint_seconds=1e-9)
    real_encode = analyze_module.encode_batch
    calls = {"n": 0}

    def stop_after(limit):
        def encode(sae, batch):
            calls["n"] += 1
            if calls["n"] > limit:
                raise _Interrupt
            return real_encode(sae, batch)
        return encode

    for limit in (3, 5):  # 3 batches of pass 1; then the rest of pass 1 and 1-2 batches of pass 2
        calls["n"] = 0
        monkeypatch.setattr(analyze_module, "encode_batch", stop_after(limit))
        with pytest.raises(_Interrupt):
            analyze(cfg, model=gemma, progress=False)
        assert not (tmp_path / "f.db").exists()
        assert (tmp_path / "f.db.work" / "state.json").is_file()
    monkeypatch.setattr(analyze_module, "encode_batch", real_encode)

    def broken_labels(fin):
        yield from ()
        raise _Interrupt

    monkeypatch.setattr("featurescope.analysis.write._label_rows", broken_labels)
    with pytest.raises(_Interrupt):
        analyze(cfg, model=gemma, progress=False)
    assert not (tmp_path / "f.db").exists()
    assert not list(tmp_path.glob(".f.db.*.tmp"))  # no half-written database left behind
    monkeypatch.undo()
    result = analyze(cfg, model=gemma, progress=False)
    assert result.resumed and not (tmp_path / "f.db.work").exists()
    assert _table_dump(tmp_path / "f.db") == _table_dump(analysed[0].path)
    again = analyze(cfg, model=gemma, progress=False)  # already complete: nothing to do
    assert again.resumed and again.path == result.path
    with pytest.raises(FeaturescopeError, match="other settings"):
        analyze(_config(analysed[1], tmp_path / "f.db", small_store, top_k=3), model=gemma, progress=False)


def test_model_mode_reads_the_same_contexts_as_the_store(analysed, gemma, small_store, tmp_path):
    """Running the model over wiki-en gives the contexts that `harvest` stored, at float32 instead of bfloat16."""
    common = dict(sae=str(analysed[1]), tokens=1000, map="none", top_k=K, window=WINDOW)
    model_db = analyze(AnalyzeConfig(out=str(tmp_path / "m.db"), corpus="wiki-en", **common), model=gemma,
                       progress=False)
    store_db = analyze(AnalyzeConfig(out=str(tmp_path / "s.db"), activations=str(small_store), **common),
                       model=gemma, progress=False)
    assert model_db.tokens == store_db.tokens == 1000
    with FeatureStore.open(model_db.path) as m, FeatureStore.open(store_db.path) as s:
        assert m.meta["corpus"] == "wiki-en" and m.meta["activations"] is None
        assert s.meta["activations"] == str(small_store.resolve())
        a, b = m.max_activations(), s.max_activations()
        both = (a > 0) & (b > 0)
        assert int(((a > 0) != (b > 0)).sum()) <= 3  # a TopK choice flipped by bfloat16 rounding
        assert both.sum() > 150 and torch.allclose(a[both], b[both], rtol=0.05)
        alive = [f for f in range(256) if m.feature(f).stats.count and s.feature(f).stats.count]
        same = sum(m.examples(f, "top")[0].context == s.examples(f, "top")[0].context for f in alive)
        assert same >= 0.8 * len(alive)  # the peaks agree but for near-ties flipped by bfloat16 rounding
        m_ctx = dict(m.con.execute("SELECT id, tokens FROM contexts"))
        s_ctx = dict(s.con.execute("SELECT id, tokens FROM contexts"))
        assert set(m_ctx) == set(range(8)) == set(s_ctx) and m_ctx == s_ctx


def test_mismatched_sae_or_layer_is_refused(gemma, small_store, tmp_path):
    def sae(d_in, layer):
        cfg = SAEConfig(d_in=d_in, d_sae=16, architecture="topk", k=2, model="default", layer=layer)
        return SAE.create(cfg).save(tmp_path / f"sae-{d_in}-{layer}")

    with pytest.raises(FeaturescopeError, match="d_model=640 but the SAE reads d_in=32"):
        analyze(_config(sae(32, 9), tmp_path / "a.db", small_store), model=gemma, progress=False)
    with pytest.raises(FeaturescopeError, match="layer 9 but the SAE reads layer 4"):
        analyze(_config(sae(640, 4), tmp_path / "b.db", small_store), model=gemma, progress=False)
    with pytest.raises(FeaturescopeError, match="out of range"):
        analyze(AnalyzeConfig(sae=str(sae(640, 40)), out=str(tmp_path / "c.db"), tokens=100), model=gemma,
                progress=False)
    with pytest.raises(FeaturescopeError, match="`top_k` must be positive"):
        analyze(_config(sae(640, 9), tmp_path / "d.db", small_store, top_k=0), model=gemma, progress=False)
    assert not list(tmp_path.glob("*.db"))


@pytest.mark.slow
def test_sigkill_at_any_moment_then_rerun_gives_the_same_database(analysed, gemma, small_store, tmp_path):
    """A run killed with SIGKILL (twice, mid-pass) and rerun ends with the uninterrupted database."""
    cfg = _config(analysed[1], tmp_path / "killed.db", small_store, batch_contexts=1, checkpoint_seconds=1e-9)
    child = ("import sys; from featurescope.analysis import AnalyzeConfig, analyze; import json; "
             "analyze(AnalyzeConfig(**json.loads(sys.argv[1])), progress=False)")
    state = tmp_path / "killed.db.work" / "state.json"
    codes = []
    for delay in (0.5, 2.0):  # early in pass 1; later (pass 2 or writing)
        before = state.read_text() if state.exists() else ""
        proc = subprocess.Popen([sys.executable, "-c", child, json.dumps(dataclasses.asdict(cfg))])
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and (not state.exists() or state.read_text() == before):
            time.sleep(0.05)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        codes.append(proc.wait())
        assert not (tmp_path / "killed.db").exists() or proc.returncode == 0
    assert codes[0] == -signal.SIGKILL
    analyze(cfg, model=gemma, progress=False)
    reference = _config(analysed[1], tmp_path / "ref.db", small_store, batch_contexts=1)
    analyze(reference, model=gemma, progress=False)
    assert _table_dump(tmp_path / "killed.db") == _table_dump(tmp_path / "ref.db")
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "killed.db.work").exists()


def test_text_search_shows_byte_tokens_as_characters(analysed, gemma):
    text = "a\u2009b 龘 and ݐ"
    with FeatureStore.open(analysed[0].path) as store:
        r = search_text(store, text, sae=str(analysed[1]), model=gemma, n=5)
    assert len(r.tokens) == len(r.token_ids) and r.tokens[0] == "<bos>"
    assert "".join(r.tokens[1:]) == text and "\ufffd" not in "".join(r.tokens)
    names = gemma.tokenizer.convert_ids_to_tokens(r.token_ids)
    i = names.index("<0xE2>")
    assert r.tokens[i:i + 3] == ["\u2009", "", ""]
    assert r.hits and all(h.acts[i] == h.acts[i + 1] == h.acts[i + 2] for h in r.hits)


def test_label_search_matches_whole_words(analysed, tmp_path):
    db = tmp_path / "f.db"
    db.write_bytes(analysed[0].path.read_bytes())
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE labels SET text = 'Sea, River' WHERE feature = 1")
        con.execute("UPDATE labels SET text = 'season, seas' WHERE feature = 2")
        con.execute("UPDATE labels SET text = 'U.S. sea-level' WHERE feature = 3")
    con.close()
    with FeatureStore.open(db) as store:
        assert {r.id for r in store.search_labels("sea")} == {1, 3}
        assert {r.id for r in store.search_labels("Season")} == {2}
        assert {r.id for r in store.search_labels("u.s.")} == {3}
        assert not store.search_labels("eason")
