"""The suite's first-letter absorption (an SAE whose token features take over from its letter features absorbs;
one with letter features alone does not) and AutoInterp detection through a fake OpenAI-compatible server."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from explain_helpers import FakeLLM, fake_llm
from featurescope.analysis.explain_all import make_explainer
from featurescope.evalsuite import absorption as A
from featurescope.evalsuite.autointerp import autointerp, db_mismatch
from featurescope.sae import SAE, SAEConfig

LETTERS = "acst"


def test_absorbed_follows_saebench_criteria():
    probe = np.array([1.0, 0.0, 0.0])
    dec = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])  # 0: main; 1: aligned (cos 0.6); 2: not
    resid = np.array([[2.0, 0.0, 0.0]] * 3)
    acts = np.array([[2.0, 0.0, 0.0],  # the main feature carries it all
                     [0.0, 3.0, 1.0],  # main silent, feature 1 projects 1.8 ≥ 0.4 × 2
                     [0.0, 0.0, 5.0]])  # main silent, nothing aligned fires
    got = A.absorbed(resid, acts, dec, probe, [0])
    assert got.silent.tolist() == [False, True, True]
    assert got.full.tolist() == [False, True, False]
    assert got.fraction.tolist() == [0.0, 1.0, 0.0]
    partial = A.absorbed(resid[:1], np.array([[1.0, 2.0, 0.0]]), dec, probe, [0])  # main 1.0, absorber 1.2 → 1.0
    assert not partial.full[0] and partial.fraction[0] == pytest.approx(0.5)


def test_the_probe_has_a_direction_per_letter_with_two_letters_too():
    rng = np.random.default_rng(0)
    for n in (2, 3):
        y = np.arange(300) % n
        means = rng.normal(size=(n, 8)) * 3
        x = means[y] + rng.normal(size=(300, 8))
        probe = A.fit_probe(x[:200], y[:200], x[200:])
        assert probe.directions.shape == (n, 8) and (probe.predicted == y[200:]).mean() > 0.9
        for c in range(n):  # each letter's direction points from the other letters' tokens toward its own
            other = means[np.arange(n) != c].mean(0)
            assert float(probe.directions[c] @ (means[c] - other)) > 0, (n, c)


def test_suite_json_is_strict():
    from featurescope.atomic import strict_json

    data = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (2, "x")}
    text = json.dumps(strict_json(data), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "x"]}


def test_split_features_grow_while_f1_jumps():
    rng = np.random.default_rng(0)
    y = (np.arange(400) % 4 == 0).astype(int)
    acts = rng.random((400, 6)) * 0.1
    half = np.flatnonzero(y)[::2]
    acts[half, 2] += 1.0  # the letter split over features 2 and 4
    acts[np.setdiff1d(np.flatnonzero(y), half), 4] += 1.0
    main, f1s = A.split_features(acts[:200], y[:200], acts[200:], y[200:])
    assert sorted(main) == [2, 4] and f1s[1] > f1s[0] + 0.03
    acts[np.flatnonzero(y), 2] += 1.0
    main, _ = A.split_features(acts[:200], y[:200], acts[200:], y[200:])
    assert main == [2]


def _letter_saes(model, layer: int) -> tuple[SAE, SAE]:
    """TopK (k = 1) SAEs over the centred residual: 'good' has one feature per letter (the direction from the other
    letters' mean to its own), 'bad' adds one feature per word token, which wins the top-1 on its own token and
    so silences the letter feature there (absorption by construction)."""
    task = A.letter_tokens(model, per_letter=16, letters=LETTERS)
    x_train = A.word_residuals(model, layer, task.train_ids)
    x = np.concatenate([x_train, A.word_residuals(model, layer, task.test_ids)])
    y = np.array(task.train_y)
    mean = x_train.mean(0)
    letters = [x_train[y == c].mean(0) - x_train[y != c].mean(0) for c in range(len(task.letters))]
    tokens = list(x - mean)

    def make(rows: list[np.ndarray]) -> SAE:
        w = torch.tensor(np.stack([r / np.linalg.norm(r) for r in rows]))
        sae = SAE.create(SAEConfig(d_in=model.d_model, d_sae=len(rows), architecture="topk", k=1, layer=layer))
        with torch.no_grad():
            sae.W_enc_rows.copy_(w)
            sae.W_dec.copy_(w)
            sae.b_dec.copy_(torch.tensor(mean))
            sae.b_enc.zero_()
            sae.input_scale.fill_(1.0)
        return sae

    return make(letters), make(letters + tokens)


def test_absorption_separates_absorbing_token_features(gemma):
    good, bad = _letter_saes(gemma, 9)
    ok = A.absorption(gemma, good, 9, per_letter=16, letters=LETTERS)
    worse = A.absorption(gemma, bad, 9, per_letter=16, letters=LETTERS)
    m, w = ok["eval_result_metrics"]["mean"], worse["eval_result_metrics"]["mean"]
    assert ok["eval_type_id"] == "absorption_first_letter"
    assert [d["first_letter"] for d in ok["eval_result_details"]] == list(LETTERS)
    assert m["probe_test_accuracy"] > 1 / len(LETTERS)  # measured: 0.62 (four letters, 20 test tokens)
    assert m["mean_full_absorption_score"] == 0.0  # measured: 0.0
    assert w["mean_full_absorption_score"] >= 0.4  # measured: 0.7
    assert w["mean_absorption_rate"] > m["mean_absorption_rate"]
    assert {"mean_absorption_fraction_score", "mean_num_split_features", "std_dev_full_absorption_score"} <= set(m)


def test_autointerp_scores_a_useful_explainer_above_a_useless_one(tiny_db):
    db, folder, sae = tiny_db
    assert db_mismatch(db, sae, str(folder), only_one=False) == ""
    assert "features" in db_mismatch(db, SAE.create(SAEConfig(d_in=640, d_sae=8, architecture="relu")), "x", True)
    results = {}
    for useless in (False, True):
        with fake_llm(useless=useless) as url:
            results[useless] = autointerp(db, make_explainer(url, "fake"), features=6)
            assert len(FakeLLM.log) == 12  # an explanation and a detection request per feature
    good = results[False]["eval_result_metrics"]["autointerp"]
    bad = results[True]["eval_result_metrics"]["autointerp"]
    assert bad["scored_latents"] >= 1 and bad["autointerp_score"] == pytest.approx(0.5)  # all "fires": chance
    assert good["autointerp_score"] > bad["autointerp_score"]
    assert [d["latent"] for d in results[False]["eval_result_details"]] == \
        [d["latent"] for d in results[True]["eval_result_details"]]  # the same seeded features


def test_suite_results_are_stored_replaced_and_served(tiny_db, tmp_path):
    from explorer_helpers import start_server
    from featurescope.featuredb.core import FeatureStore
    from featurescope.featuredb.suite import read_suite, store_suite

    db = tmp_path / "f.db"
    db.write_bytes(tiny_db[0].read_bytes())
    absorbed = {"eval_type_id": "absorption_first_letter", "eval_config": {"max_k_value": 10},
                "eval_result_metrics": {"mean": {"mean_full_absorption_score": 0.25,
                                                 "mean_absorption_fraction_score": float("nan")}},
                "eval_result_details": [{"first_letter": "a"}], "seconds": 1.0}
    store_suite(db, {"a": {"absorption_first_letter": absorbed, "autointerp": {"eval_type_id": "autointerp",
                                                                              "skipped": "no explainer"},
                           "seconds": 2.0}})
    store_suite(db, {"b": {"absorption_first_letter": absorbed}})
    store_suite(db, {"b": {"absorption_first_letter": {**absorbed, "eval_result_metrics": {"mean": {
        "mean_full_absorption_score": 0.5}}}}})  # replaces b's rows, keeps a's
    with FeatureStore.open(db) as store:
        rows = read_suite(store.con)
        details = json.loads(store.con.execute("SELECT details FROM suite_results WHERE sae = 'a' AND "
                                               "metric = 'mean_full_absorption_score'").fetchone()[0])
    assert [(r["sae"], r["task"], r["metric"], r["value"]) for r in rows] == [
        ("a", "absorption_first_letter", "mean_absorption_fraction_score", None),
        ("a", "absorption_first_letter", "mean_full_absorption_score", 0.25),
        ("a", "autointerp", "skipped", None),
        ("b", "absorption_first_letter", "mean_full_absorption_score", 0.5)]
    assert details == {"category": "mean", "eval_config": {"max_k_value": 10},
                       "eval_result_details": [{"first_letter": "a"}], "seconds": 1.0}
    srv = start_server(db)
    try:
        api = httpx.get(f"{srv.url.rstrip('/')}/api/saes", timeout=30).json()
    finally:
        srv.stop()
    assert not api["available"] and len(api["suite"]) == 4 and api["suite"][3]["value"] == 0.5
