"""The offline suite's sparse probing: datasets from held-out corpus documents, pooling, and probes that tell an SAE
with a known language feature from a random one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featurescope.errors import FeaturescopeError
from featurescope.evalsuite import causal
from featurescope.evalsuite import datasets as D
from featurescope.evalsuite.pooled import pooled
from featurescope.evalsuite.sparse_probing import sparse_probing, top_features
from featurescope.harvest.heldout import is_heldout_document
from featurescope.probes.encode import tokenize
from featurescope.sae import SAE, SAEConfig

LANGS = ("en", "fr", "de", "ru", "zh")


@pytest.fixture(scope="module")
def languages():
    return D.language_id(LANGS, per_split=12)


@pytest.fixture(scope="module")
def planted(gemma, languages):
    """An SAE whose feature 0 detects French (`_language_sae`), built once."""
    return _language_sae(gemma, languages, 9, lang=1)


def test_datasets_hold_out_documents_and_split_them(languages):
    assert languages.classes == list(LANGS)
    assert len(languages.train) == len(languages.test) == 12 * len(LANGS)
    assert not {t for t, _ in languages.train} & {t for t, _ in languages.test}
    code = D.code_vs_prose(per_split=10)
    assert code.classes == ["code", "prose"] and {c for _, c in code.train} == {0, 1}
    assert any("def " in t or "import " in t for t, c in code.test if c == 0)
    docs = list(D._verses("fr", 0.05, 300))
    assert docs and all(is_heldout_document(d, 0.05) for d, _ in docs)
    assert all(d.startswith("bible-fr:") for d, _ in docs)
    assert {D.is_test_document("python:a/b.py:0"), D.is_test_document("python:a/b.py:7")} in ({True}, {False})
    with pytest.raises(FeaturescopeError, match="two or more"):
        D.language_id(("en", "xx"))


def test_top_features_are_the_columns_that_differ():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 50))
    y = (np.arange(200) % 2).astype(np.int64)
    x[y == 1, 7] += 3.0
    x[y == 1, 31] -= 2.0
    assert top_features(x, y, 2).tolist() == [7, 31]


def _language_sae(model, languages, layer: int, lang: int, d_sae: int = 64) -> SAE:
    """A ReLU SAE of random unit rows, except feature 0: the direction from the other languages' mean residual to
    `lang`'s, with a bias halfway between them (ground truth: feature 0 is a `lang` detector)."""
    texts = [t for t, _ in languages.train]
    labels = np.array([c for _, c in languages.train])
    resid = pooled(model, SAE.create(SAEConfig(d_in=model.d_model, d_sae=1, architecture="relu", layer=layer)),
                   layer, texts).residual
    pos, neg = resid[labels == lang].mean(0), resid[labels != lang].mean(0)
    direction = torch.tensor(pos - neg)
    unit = direction / direction.norm()
    rows = torch.nn.functional.normalize(torch.randn(d_sae, model.d_model, generator=torch.Generator().manual_seed(0)),
                                         dim=1)
    rows[0] = unit
    sae = SAE.create(SAEConfig(d_in=model.d_model, d_sae=d_sae, architecture="relu", apply_b_dec_to_input=False,
                               layer=layer))
    with torch.no_grad():
        sae.W_enc_rows.copy_(rows)
        sae.W_dec.copy_(rows)
        sae.b_dec.zero_()
        sae.input_scale.fill_(1.0)
        sae.b_enc.copy_(-(rows @ torch.tensor((pos + neg) / 2)))
    return sae


def test_sparse_probing_finds_a_planted_language_feature(gemma, languages, planted):
    layer = 9
    random = SAE.create(planted.cfg)
    random.load_state_dict(planted.state_dict())
    with torch.no_grad():  # feature 0 becomes a copy of feature 1, a random direction: no French feature left
        random.W_enc_rows[0] = planted.W_enc_rows[1]
        random.b_enc[0] = planted.b_enc[1]
    good = sparse_probing(gemma, planted, layer, [languages], ks=(1, 2))
    bad = sparse_probing(gemma, random, layer, [languages], ks=(1, 2))
    fr = good["eval_result_details"][0]["classes"]["fr"]
    assert fr["top_features"][0] == 0 and fr["sae_top_1_test_accuracy"] >= 0.8  # measured: 0.83 (24 texts)
    chance = bad["eval_result_details"][0]["classes"]["fr"]
    assert chance["sae_top_1_test_accuracy"] <= fr["sae_top_1_test_accuracy"] - 0.1  # measured: 0.71
    metrics = good["eval_result_metrics"]
    assert set(metrics["sae"]) == {"sae_test_accuracy", "sae_top_1_test_accuracy", "sae_top_2_test_accuracy"}
    assert metrics["llm"]["llm_test_accuracy"] >= 0.9  # the residual tells five scripts and languages apart
    assert good["eval_result_details"][0]["dataset_name"] == "language_id"
    with pytest.raises(FeaturescopeError, match="k values"):
        sparse_probing(gemma, planted, layer, [languages], ks=(0,))


def test_language_tokens_are_each_languages_own(gemma, languages):
    ids, _ = tokenize(gemma, [t for t, _ in languages.train], 64)
    own = causal.language_tokens(ids, languages)
    assert all(own[c] for c in range(len(LANGS)))
    zh = {gemma.tokenizer.decode([t]) for t in own[LANGS.index("zh")]}
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in zh) >= len(zh) // 2
    assert not set(own[0]) & set(own[1])  # en and fr share no "own" token


def test_clamping_a_planted_language_feature_moves_the_next_token_toward_it(gemma, languages, planted):
    layer = 9
    train = pooled(gemma, planted, layer, [t for t, _ in languages.train])
    out = causal.causal_language(gemma, planted, layer, languages, train, controls=3)
    fr = next(d for d in out["eval_result_details"] if d["language"] == "fr")
    assert fr["feature"] == 0 and fr["p_steered"] > fr["p_clean"]
    assert fr["shift"] > max(fr["random_shifts"])  # more than any random feature clamped the same way
    metrics = out["eval_result_metrics"]["causal"]
    assert metrics["languages"] == len(LANGS) - 1 and metrics["languages_above_control"] >= 1


def test_eval_suite_cli_writes_saebench_fields(gemma, planted, tiny_db, tmp_path, monkeypatch, capsys):
    import json

    from featurescope import cli
    from featurescope.evalsuite import suite
    from featurescope.evaluate import run as eval_run
    from featurescope.featuredb.core import FeatureStore
    from featurescope.featuredb.suite import read_suite

    monkeypatch.setattr(eval_run, "load_model", lambda *a, **k: gemma)
    monkeypatch.setattr(suite, "absorption", lambda *a, **k: ABSORPTION)  # tested on its own (test_absorption_*)
    monkeypatch.setenv("COLUMNS", "250")
    folder = planted.save(tmp_path / "sae")
    out = tmp_path / "suite.json"
    argv = ["eval", str(folder), "--suite", "--suite-texts", "4", "--suite-out", str(out), "--device", "cpu"]
    assert cli.main([*argv, "--suite-out", str(tmp_path / "missing" / "x.json")]) == 2  # checked before the suite
    assert "the folder" in capsys.readouterr().err and not out.exists()
    db = tmp_path / "f.db"
    db.write_bytes(tiny_db[0].read_bytes())
    assert cli.main([*argv, "--db", str(db)]) == 0  # no --explainer: AutoInterp is skipped, saying why
    shown = capsys.readouterr().out
    assert "top-1" in shown and "language shift" in shown and "absorption" in shown
    assert "skipped" in shown and "--explainer URL" in shown and f"stored in {db}" in shown
    with FeatureStore.open(db) as store:
        stored = {(r["task"], r["metric"]): r["value"] for r in read_suite(store.con)}
    assert stored[("absorption_first_letter", "mean_full_absorption_score")] == 0.2
    assert ("autointerp", "skipped") in stored and ("sparse_probing", "sae_top_1_test_accuracy") in stored
    result = json.loads(out.read_text())["saes"][str(folder)]
    probing = result["sparse_probing"]
    assert set(probing["eval_result_metrics"]["sae"]) == {"sae_test_accuracy", "sae_top_1_test_accuracy",
                                                          "sae_top_2_test_accuracy", "sae_top_5_test_accuracy"}
    assert [d["dataset_name"] for d in probing["eval_result_details"]] == ["language_id", "code_vs_prose"]
    assert result["causal_language"]["eval_result_metrics"]["causal"]["languages"] == len(D.LANGUAGES) - 1
    assert result["absorption_first_letter"] == ABSORPTION
    assert result["autointerp"]["eval_type_id"] == "autointerp" and "--explainer" in result["autointerp"]["skipped"]
    assert cli.main([*argv[:3], "--suite-texts", "2"]) == 2
    assert "--suite-texts must be at least 4" in capsys.readouterr().err


ABSORPTION = {"eval_type_id": "absorption_first_letter", "eval_result_metrics": {"mean": {
    "mean_absorption_fraction_score": 0.1, "mean_full_absorption_score": 0.2, "mean_num_split_features": 1.5}},
    "eval_result_details": []}
