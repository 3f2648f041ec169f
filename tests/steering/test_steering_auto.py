"""`auto` steering values: the fluency rule, the calibration on the embedded model, its cache, the CLI and the API."""

from __future__ import annotations

import functools
import json
import sqlite3

import pytest
import torch

from featurescope import cli
from featurescope.commands import steer as cli_steer
from featurescope.errors import FeaturescopeError
from featurescope.steering import auto, calibrate
from featurescope.steering.calibrate import CalibrationConfig, Fluency, calibrate_feature, fluency, is_fluent
from featurescope.steering.values import AUTO, parse_value, parse_values, resolve_values
from steering_helpers import PROMPT, make_db, orthogonal_sae

MAXES = torch.tensor([10.0, 20.0, 100.0, 0.0, 5.0, 6.0, 7.0, 8.0])
# orthogonal_sae's features sit at ~100 ± 25 everywhere: 1x of 100 barely moves the residual; 1000x adds ~2e7
# along one direction (residual norms there are ~5e3)
FAST = CalibrationConfig(prompts=(PROMPT, "I went for a walk and"), multiples=(1.0, 1000.0), max_new_tokens=6)


def test_fluency_measures_runs_and_loops():
    assert fluency([5, 5, 5, 5, 1]) == Fluency(4, 0.5)
    assert fluency([1, 2, 1, 2, 1, 2, 1, 2]) == Fluency(1, 2 / 7)  # "LIVE- LIVE- LIVE-"
    assert fluency([1, 2, 3, 4]) == Fluency(1, 1.0) and fluency([7]) == Fluency(1, 1.0)
    cfg = CalibrationConfig()
    good = Fluency(1, 0.95)
    assert is_fluent(Fluency(3, 0.9), good, cfg) and not is_fluent(Fluency(4, 0.9), good, cfg)
    assert not is_fluent(Fluency(1, 0.5), good, cfg)
    assert is_fluent(Fluency(1, 0.4), Fluency(1, 0.5), cfg)  # a base model that loops itself sets a lower bar


def test_auto_parses_and_must_be_resolved():
    assert parse_value("auto") is AUTO and parse_value(" AUTO ").auto and str(AUTO) == "auto"
    with pytest.raises(FeaturescopeError, match="resolve the value auto first"):
        resolve_values({2: "auto"}, 8, MAXES)
    with pytest.raises(FeaturescopeError, match="auto is not a multiple"):
        parse_values("1,auto")


def test_calibration_keeps_the_largest_fluent_multiple(gemma):
    sae = orthogonal_sae()
    c = calibrate_feature(gemma, sae, 2, 100.0, FAST)
    assert [t.multiple for t in c.trials] == [1.0, 1000.0]
    low, high = c.trials
    assert low.fluent and not high.fluent and high.changed
    assert any(f.run > FAST.max_run or f.distinct < 0.6 for f in high.fluency), high
    assert c.multiple == 1.0 and c.value == pytest.approx(100.0) and "1000x degenerates" in c.reason
    with pytest.raises(FeaturescopeError, match="never fired"):
        calibrate_feature(gemma, sae, 3, 0.0, FAST)


def test_nothing_fluent_falls_back_to_1x(gemma):
    cfg = CalibrationConfig(prompts=(PROMPT,), multiples=(1000.0, 2000.0), max_new_tokens=6)
    c = calibrate_feature(gemma, orthogonal_sae(), 2, 1000.0, cfg)  # 0.5x = 500: ~+400 from where it sits
    assert [t.multiple for t in c.trials] == [1000.0, 0.5] and c.multiple == 1.0 and c.value == 1000.0
    assert not c.trials[0].fluent and "no multiple tried stays fluent" in c.reason


def test_cache_in_the_database(gemma, tmp_path, monkeypatch):
    sae = orthogonal_sae()
    db = make_db(tmp_path / "f.db", sae, MAXES)
    first = auto.auto_value(gemma, sae, 2, 100.0, con=None, db=db, cfg=FAST)
    assert not first.cached
    with sqlite3.connect(db) as con:
        row = con.execute("SELECT feature, mode, multiple, value, trials FROM steer_calibration").fetchone()
        assert row[:4] == (2, "clamp", 1.0, pytest.approx(100.0)) and len(json.loads(row[4])) == 2

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached choice should be used")

    monkeypatch.setattr(auto, "calibrate_feature", no_generation)
    with sqlite3.connect(db) as con:
        again = auto.auto_value(gemma, sae, 2, 100.0, con=con, db=db, cfg=FAST)
        assert again.cached and again.multiple == 1.0 and again.reason == first.reason
        other_sae = orthogonal_sae(seed=1)  # another SAE's feature 2: not this cache entry
        with pytest.raises(AssertionError, match="cached choice"):
            auto.auto_value(gemma, other_sae, 2, 100.0, con=con, cfg=FAST)
        with pytest.raises(AssertionError, match="cached choice"):  # another rule
            auto.auto_value(gemma, sae, 2, 100.0, con=con, cfg=FAST.__class__(**{**FAST.__dict__, "max_run": 2}))


def test_read_only_database_is_not_written(gemma, tmp_path, monkeypatch):
    sae = orthogonal_sae()
    db = make_db(tmp_path / "ro.db", sae, MAXES)
    before = db.read_bytes()
    monkeypatch.setattr(auto, "writable", lambda path: False)
    c = auto.auto_value(gemma, sae, 2, 100.0, db=db, cfg=FAST)
    assert c.multiple == 1.0 and db.read_bytes() == before


def test_steer_cli_defaults_to_auto_and_caches(capsys, tmp_path, monkeypatch, gemma):
    monkeypatch.setattr(cli_steer, "_load_model", lambda name, sae, device: gemma)
    monkeypatch.setattr(calibrate, "CalibrationConfig", functools.partial(
        CalibrationConfig, prompts=FAST.prompts, multiples=FAST.multiples, max_new_tokens=FAST.max_new_tokens))
    sae = orthogonal_sae()
    sae_dir, db = sae.save(tmp_path / "sae"), make_db(tmp_path / "features.db", sae, MAXES)
    argv = ["steer", "--sae", str(sae_dir), "--db", str(db), "--feature", "2", "--prompt", PROMPT,
            "--max-new-tokens", "2", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)["features"]["2"]
    assert out["given"] == "auto" and out["value"] == pytest.approx(100.0)
    assert out["auto"]["multiple"] == 1.0 and not out["auto"]["cached"] and "1000x degenerates" in out["auto"]["reason"]
    monkeypatch.setenv("COLUMNS", "160")
    assert cli.main([*argv[:-1], "--clamp", "auto", "--show-multiples"]) == 0
    shown = capsys.readouterr().out
    assert "feature 2: auto = 1x (cached)" in shown and "steered: feature 2 clamp 1x = 100" in shown
    assert all(f"steered at {m}" in shown for m in ("1x", "2x", "5x"))
    assert cli.main(["steer", "--sae", str(sae_dir), "--feature", "2", "--prompt", PROMPT]) == 2
    assert "auto (the default)" in capsys.readouterr().err


def test_explorer_steer_api_uses_auto_by_default(gemma, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from featurescope.server import create_app

    monkeypatch.setattr(calibrate, "CalibrationConfig", functools.partial(
        CalibrationConfig, prompts=FAST.prompts, multiples=FAST.multiples, max_new_tokens=FAST.max_new_tokens))
    sae = orthogonal_sae()
    db = make_db(tmp_path / "features.db", sae, MAXES)
    with TestClient(create_app(db, sae=sae, model=gemma), base_url="http://127.0.0.1") as client:
        body = {"prompt": PROMPT, "features": [{"feature": 2}], "max_new_tokens": 2}
        r = client.post("/api/steer", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["values"]["2"] == pytest.approx(100.0) and data["auto"]["2"]["multiple"] == 1.0
        assert "1000x degenerates" in data["auto"]["2"]["reason"]
        monkeypatch.setattr(auto, "calibrate_feature", lambda *a, **k: pytest.fail("kept in memory"))
        again = client.post("/api/steer", json={**body, "features": [{"feature": 2, "value": "auto"}]}).json()
        assert again["auto"]["2"]["multiple"] == 1.0
        fixed = client.post("/api/steer", json={**body, "features": [{"feature": 2, "value": "2x"}]}).json()
        assert fixed["values"]["2"] == pytest.approx(200.0) and fixed["auto"] == {}
        columns = [[{"feature": 2}], [{"feature": 2, "value": "2x"}]]
        stream = client.post("/api/steer/stream", json={"prompt": PROMPT, "max_new_tokens": 2, "columns": columns})
        start = json.loads(stream.text.splitlines()[0])
        assert [c["auto"] for c in start["columns"]][::2] == [{}, {}]  # the baseline and the fixed 2x column
        assert start["columns"][1]["auto"]["2"]["multiple"] == 1.0
        assert "1000x degenerates" in start["columns"][1]["auto"]["2"]["reason"]


def _trial(m: float, *, fluent: bool = True, concept: float = 0.0, changed: bool = True) -> calibrate.Trial:
    return calibrate.Trial(m, m, ["a text"], [Fluency(1, 1.0)], fluent, changed, concept)


def test_choice_prefers_the_multiple_where_the_concept_shows():
    cfg = CalibrationConfig()
    assert cfg.needed() == 2 and CalibrationConfig(prompts=("a",)).needed() == 1
    assert CalibrationConfig(prompts=("a", "b")).needed() == 2
    assert CalibrationConfig(prompts=("a", "b", "c", "d"), quorum=0.5).needed() == 2
    m, why = calibrate.choose([_trial(1, concept=0.05), _trial(1.5, concept=0.2), _trial(2, concept=0.1),
                               _trial(3, fluent=False)], cfg)
    assert m == 1.5 and "+20%" in why and "3x degenerates" in why
    m, why = calibrate.choose([_trial(1, concept=0.09), _trial(2, concept=0.12), _trial(3, concept=0.13)], cfg)
    assert m == 2 and "+12%" in why and "best +13%" in why  # the smallest within 0.75 of the best
    assert calibrate.choose([_trial(1, concept=0.1), _trial(2, concept=0.1)], cfg)[0] == 1
    m, why = calibrate.choose([_trial(1), _trial(1.5), _trial(2, fluent=False)], cfg)
    assert m == 1.5 and "does not fire on the steered text" in why and "2x degenerates" in why
    m, why = calibrate.choose([_trial(1, concept=-0.05), _trial(1.5, concept=-0.1)], cfg)  # fires less than unsteered
    assert m == 1.5 and "does not fire on the steered text" in why
    m, why = calibrate.choose([_trial(1, fluent=False), _trial(0.5, concept=0.1)], cfg)
    assert m == 0.5 and "1x degenerates" in why
    m, why = calibrate.choose([_trial(1, fluent=False), _trial(0.5, fluent=False)], cfg)
    assert m == 1.0 and "no multiple tried stays fluent" in why
    assert "unchanged" in calibrate.choose([_trial(1, changed=False)], cfg)[1]


def test_firing_share_reads_each_continuation_as_if_alone(gemma):
    sae = orthogonal_sae(bias=1.0)  # f_i = q_i·x/200 + 1: q_i·x/200 is -3…0 here, so some fire on some tokens
    prompts = (PROMPT, "I went for a walk and")
    tok = gemma.tokenizer
    conts = [tok(" a long river that runs to the sea", add_special_tokens=False)["input_ids"],
             tok(" saw", add_special_tokens=False)["input_ids"]]
    seen = set()
    for feature in range(8):
        got = calibrate.firing_share(gemma, sae, 9, prompts, conts, feature, 0.0)
        want = []
        for p, c in zip(prompts, conts, strict=True):
            head = tok(p)["input_ids"]
            acts = sae.encode(gemma.residual(torch.tensor([head + c]), 9))[0, len(head):, feature]
            want.append(float((acts > 0).float().mean()))
        assert got == pytest.approx(want, abs=1e-6)
        seen.update(got)
    assert len(seen) > 2  # not all 0 or all 1: the shares measure something
    assert calibrate.firing_share(gemma, sae, 9, prompts[:1], [[]], 0, 0.0) == [0.0]
