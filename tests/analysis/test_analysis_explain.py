"""LLM explanations against a fake OpenAI-compatible server started here; the scoring is the real code."""

from __future__ import annotations

import json
import re

import pytest
import torch

from explain_helpers import FakeLLM, fake_llm
from featurescope.activations import ActivationStore
from featurescope.analysis import AnalyzeConfig, ExplainConfig, analyze, explain_db
from featurescope.analysis.explain import LocalChat, explain_feature, parse_detection, parse_explanation
from featurescope.analysis.explain_all import SAVE_EVERY
from featurescope.analysis.labels import MIN_NEGATIVES, MIN_POSITIVES
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore
from featurescope.sae import SAE, SAEConfig


@pytest.fixture()
def server():
    with fake_llm() as url:
        yield url


@pytest.fixture(scope="module")
def small_db(gemma, small_store, tmp_path_factory):
    """An analysis of 1,500 tokens with a freshly initialised TopK SAE of 64 features (centred on the data)."""
    tmp = tmp_path_factory.mktemp("explain")
    sae = SAE.create(SAEConfig(d_in=640, d_sae=64, architecture="topk", k=4, model="default", layer=9), seed=1)
    x = ActivationStore(small_store).rows(0, 1500)
    with torch.no_grad():
        sae.input_scale.fill_(640**0.5 / float(x.norm(dim=1).mean()))
        sae.b_dec.copy_((x * sae.input_scale).mean(0))
    sae.save(tmp / "sae")
    analyze(AnalyzeConfig(sae=str(tmp / "sae"), out=str(tmp / "f.db"), activations=str(small_store), tokens=1500,
                          map="none", top_k=3, per_interval=3, window=16), model=gemma, progress=False)
    return tmp / "f.db"


def _clean(text: str) -> str:
    return " ".join(text.split())


def test_explanations_from_an_openai_compatible_server_are_scored_by_detection(small_db, server, tmp_path,
                                                                                monkeypatch):
    db = tmp_path / "f.db"
    db.write_bytes(small_db.read_bytes())
    monkeypatch.setenv("FAKE_KEY", "sekret")
    cfg = ExplainConfig(db=str(db), explainer=server, explainer_model="fake-model", features=4, api_key_env="FAKE_KEY")
    result = explain_db(cfg, progress=False)
    assert result.explained == 4 and result.scored >= 1
    assert len(FakeLLM.log) == 8  # one explanation and one detection request per feature
    for req in FakeLLM.log:
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekret"
        assert req["body"]["model"] == "fake-model" and req["body"]["temperature"] == 0
    with FeatureStore.open(db) as store:
        alive = [r[0] for r in store.con.execute("SELECT id FROM features WHERE count > 0 ORDER BY id LIMIT 4")]
        for n, f in enumerate(alive):
            feature = store.feature(f)
            (llm,) = [lb for lb in feature.labels if lb.kind == "llm"]
            assert llm.text.startswith("the token ") and llm.details["explainer"] == f"fake-model @ {server}"
            # recompute the score from what the server was shown and answered
            detect = FakeLLM.log[2 * n + 1]
            texts = re.findall(r"^\d+\. (.*)$", detect["body"]["messages"][-1]["content"], flags=re.MULTILINE)
            answer = json.loads(detect["reply"][len("Sure: "):])
            assert answer == [int(llm.text[len("the token "):] in t) for t in texts]
            seen = {e.context for e in feature.top}
            positives = {_clean("".join(e.tokens)) for e in feature.quantiles if e.context not in seen}
            negatives = {_clean("".join(e.tokens)) for e in feature.negatives}
            truth = [t in positives for t in texts]
            assert all(t in positives or t in negatives for t in texts)
            tp = sum(a and t for a, t in zip(answer, truth, strict=True))
            tn = sum(not a and not t for a, t in zip(answer, truth, strict=True))
            if truth.count(True) >= MIN_POSITIVES and truth.count(False) >= MIN_NEGATIVES:
                expected = (tp / truth.count(True) + tn / truth.count(False)) / 2
                assert llm.score == pytest.approx(expected)
                assert llm.details["detection"]["positives"] == truth.count(True)
                assert 0 <= llm.score_lower < llm.score
            else:  # too few held-out windows to score
                assert llm.score is None and llm.score_lower is None
        ranked = store.top(by="label-score", n=64)
        assert [r.score_lower for r in ranked if r.score_lower is not None] == sorted(
            (r.score_lower for r in ranked if r.score_lower is not None), reverse=True)


def test_explaining_resumes_after_a_failure(small_db, server, tmp_path):
    db = tmp_path / "f.db"
    db.write_bytes(small_db.read_bytes())
    cfg = ExplainConfig(db=str(db), explainer=server, explainer_model="m", features=SAVE_EVERY + 2)
    FakeLLM.fail_after = 2 * SAVE_EVERY + 1  # the 11th feature's detection request fails
    with pytest.raises(FeaturescopeError, match="answered HTTP 500"):
        explain_db(cfg, progress=False)
    with FeatureStore.open(db) as store:  # the database is untouched
        assert not store.con.execute("SELECT COUNT(*) FROM labels WHERE kind = 'llm'").fetchone()[0]
    assert (tmp_path / "f.db.explain.json").is_file()
    FakeLLM.log, FakeLLM.fail_after = [], None
    result = explain_db(cfg, progress=False)
    assert result.explained == SAVE_EVERY + 2 and len(FakeLLM.log) == 4  # only the last two features again
    assert not (tmp_path / "f.db.explain.json").exists()
    FakeLLM.log = []
    assert explain_db(cfg, progress=False).explained == SAVE_EVERY + 2 and not FakeLLM.log  # nothing left to do


def test_unreachable_or_misconfigured_explainers_fail_clearly(small_db, tmp_path):
    db = tmp_path / "f.db"
    db.write_bytes(small_db.read_bytes())
    with pytest.raises(FeaturescopeError, match="cannot reach the explainer"):
        explain_db(ExplainConfig(db=str(db), explainer="http://127.0.0.1:9/v1", explainer_model="m"), progress=False)
    with pytest.raises(FeaturescopeError, match="must start with http"):
        explain_db(ExplainConfig(db=str(db), explainer="localhost:8080", explainer_model="m"), progress=False)
    with pytest.raises(FeaturescopeError, match="needs a model name"):
        explain_db(ExplainConfig(db=str(db), explainer="http://localhost:8080"), progress=False)
    with pytest.raises(FeaturescopeError, match="no explainer"):
        explain_db(ExplainConfig(db=str(db)), progress=False)


def test_reply_parsing():
    assert parse_explanation('\n  Explanation: "bridges and rivers"\nmore') == "bridges and rivers"
    assert parse_explanation("") == ""
    assert parse_detection("Here: [1, 0, 0.5]", 3) == [1.0, 0.0, 0.5]
    assert parse_detection("[1, 0] then [0, 1, 1]", 3) == [0.0, 1.0, 1.0]
    assert parse_detection("[1, 0]", 3) is None and parse_detection("yes", 1) is None
    assert parse_detection("[true, false]", 2) is None
    assert parse_detection("[3, -1]", 2) == [1.0, 0.0]


@pytest.mark.slow
def test_the_embedded_model_can_explain_and_score(small_db, gemma):
    with FeatureStore.open(small_db) as store:
        f = next(r[0] for r in store.con.execute("SELECT id FROM features WHERE count > 0 ORDER BY density DESC"))
        chat = LocalChat(gemma, max_new_tokens=8)
        exp = explain_feature(chat, store.feature(f), examples=3, score_examples=2)
    assert isinstance(exp.text, str)
    if exp.score is not None:
        assert 0 <= exp.score <= 1 and all(0 <= p <= 1 for p in exp.details["predictions"])
        assert 0 <= exp.details["detection"]["auroc"] <= 1
