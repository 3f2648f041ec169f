"""`featurescope steer` / `steer-sweep` and the sweep's measurements, on the embedded model."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from featurescope import cli
from featurescope.commands import steer as cli_steer
from featurescope.featuredb.core import FeatureStore
from featurescope.steering.hook import feature_directions
from featurescope.steering.plot import write_outputs
from featurescope.steering.sweep import SweepConfig, sweep, top_token_ids
from steering_helpers import PROMPT, make_db, orthogonal_sae

MAXES = torch.tensor([10.0, 20.0, 100.0, 0.0, 5.0, 6.0, 7.0, 8.0])


@pytest.fixture()
def use_gemma(gemma, monkeypatch):
    """Commands run in-process reuse the session's model instead of loading it again."""
    monkeypatch.setattr(cli_steer, "_load_model", lambda name, sae, device: gemma)
    return gemma


@pytest.fixture()
def sae_and_db(tmp_path):
    sae = orthogonal_sae()
    return sae, sae.save(tmp_path / "sae"), make_db(tmp_path / "features.db", sae, MAXES,
                                                    top_tokens={2: [101, 202, 303]})


def _one_line_error(capsys, argv: list[str], message: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featurescope: error: ") and message in err[0], err


def test_steer_cli_one_line_errors(capsys, tmp_path, use_gemma, sae_and_db):
    _, sae_dir, db = sae_and_db
    base = ["steer", "--sae", str(sae_dir), "--prompt", PROMPT, "--max-new-tokens", "1"]
    _one_line_error(capsys, [*base, "--feature", "8", "--clamp", "1"], "feature 8 is out of range")
    _one_line_error(capsys, [*base, "--feature", "2", "--clamp", "5x"], "give the feature database (--db)")
    _one_line_error(capsys, [*base, "--feature", "3", "--clamp", "5x", "--db", str(db)], "feature 3 never fired")
    _one_line_error(capsys, [*base, "--feature", "2", "--clamp", "1", "--prompt", ""], "the prompt is empty")
    _one_line_error(capsys, [*base, "--feature", "2", "--feature", "3", "--clamp", "1", "--clamp", "2",
                             "--clamp", "3"], "2 features but 3 values")
    _one_line_error(capsys, [*base, "--feature", "2", "--clamp", "1", "--layer", "4"],
                    "the SAE reads layer 9, not layer 4")
    narrow = orthogonal_sae(d=32).save(tmp_path / "narrow")
    _one_line_error(capsys, ["steer", "--sae", str(narrow), "--prompt", PROMPT, "--feature", "0", "--clamp", "1"],
                    "the SAE reads d_in=32 but default has d_model=640")
    _one_line_error(capsys, ["steer-sweep", "--sae", str(sae_dir), "--feature", "2"], "--db or --max-activation")


def test_steer_cli_resolves_multiples_from_the_db_and_prints_both(capsys, monkeypatch, use_gemma, sae_and_db):
    monkeypatch.setenv("COLUMNS", "160")
    _, sae_dir, db = sae_and_db
    argv = ["steer", "--sae", str(sae_dir), "--db", str(db), "--feature", "2", "--clamp", "1.3x", "--feature", "4",
            "--clamp", "-2x", "--prompt", PROMPT, "--max-new-tokens", "3"]
    assert cli.main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["features"]["2"]["value"] == pytest.approx(130.0) and out["features"]["4"]["value"] == pytest.approx(-10)
    assert out["baseline"] and out["steered"] and out["baseline"] != out["steered"]
    assert cli.main(argv) == 0
    shown = capsys.readouterr().out
    assert "baseline" in shown and "steered: feature 2 clamp 1.3x = 130; feature 4 clamp -2x = -10" in shown
    assert out["baseline"].split()[0] in shown


def test_top_tokens_come_from_the_db_else_from_the_decoder(gemma, sae_and_db):
    sae, _, db = sae_and_db
    with FeatureStore.open(db) as store:
        assert top_token_ids(gemma, sae, 2, 2, store) == [101, 202]
    d = feature_directions(sae, [2])[0] * (1 + gemma.final_norm.weight.detach().float())  # Gemma's norm: 1 + w
    expected = (gemma.unembed.detach() @ d).topk(4).indices.tolist()
    assert top_token_ids(gemma, sae, 2, 4) == expected


def test_sweep_measures_the_clamp_and_its_cost(gemma, tmp_path, sae_and_db):
    sae, _, db = sae_and_db
    cfg = SweepConfig(feature=2, multiples="0,1.3", max_new_tokens=3, contexts=1, ctx_len=12, batch_size=1,
                      top_tokens=3)
    with FeatureStore.open(db) as store:
        result = sweep(cfg, gemma, sae, max_acts=store.max_activations(), store=store, progress=False)
    assert [r.multiple for r in result.rows] == [None, 0.0, 1.3] and result.max_activation == 100.0
    assert [t for t, _ in result.top_tokens] == [101, 202, 303]  # from the database
    base, zero, up = result.rows
    assert base.kl == 0 and base.delta_ce == 0 and base.top_prob_ratio == 1 and 90 < base.act_hooked < 110
    assert zero.act_hooked == pytest.approx(0.0, abs=1e-2) and up.act_hooked == pytest.approx(130.0, abs=1e-2)
    assert zero.kl > 0.01 and up.kl > 0.01 and result.reference_tokens == 11
    assert up.ce == pytest.approx(base.ce + up.delta_ce) and up.text != base.text
    add = sweep(SweepConfig(feature=2, multiples="0", mode="add", max_new_tokens=1, contexts=1, ctx_len=12,
                            top_tokens=3), gemma, sae, max_acts=MAXES, progress=False)
    assert add.rows[1].kl == pytest.approx(0.0, abs=1e-6) and add.rows[1].delta_ce == pytest.approx(0.0, abs=1e-6)
    assert add.rows[1].top_prob_ratio == pytest.approx(1.0, rel=1e-5)
    json_path, html_path = write_outputs(result, tmp_path / "out")
    saved = json.loads(json_path.read_text())
    assert saved["rows"][0]["multiple"] is None and saved["rows"][2]["value"] == pytest.approx(130.0)
    html = html_path.read_text()
    assert "<html>" in html[:200] and "Plotly.newPlot" in html
    assert len(html) > 1_000_000 and '<script src="http' not in html  # plotly.js embedded: works offline


def test_steer_sweep_cli_writes_json_and_plot(capsys, tmp_path, use_gemma, sae_and_db):
    _, sae_dir, db = sae_and_db
    out = tmp_path / "sweep"
    argv = ["-q", "steer-sweep", "--sae", str(sae_dir), "--db", str(db), "--feature", "2", "--multiples", "-1,1.3",
            "--max-new-tokens", "2", "--contexts", "1", "--ctx-len", "8", "--top-tokens", "3", "--out", str(out)]
    assert cli.main(argv) == 0
    shown = capsys.readouterr().out
    assert "-1x" in shown and "1.3x" in shown and "feature_2.html" in shown.replace("\n", "")
    saved = json.loads((out / "feature_2.json").read_text())
    assert [r["multiple"] for r in saved["rows"]] == [None, -1.0, 1.3]
    assert saved["rows"][2]["act_hooked"] == pytest.approx(130.0, abs=1e-2)
    assert (out / "feature_2.html").stat().st_size > 1_000_000


@pytest.mark.slow
def test_steer_cli_subprocess_end_to_end(tmp_path, sae_and_db):
    _, sae_dir, db = sae_and_db
    result = run_cli("steer", "--sae", str(sae_dir), "--db", str(db), "--feature", "2", "--clamp", "-0.5x",
                     "--prompt", PROMPT, "--max-new-tokens", "4", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["features"]["2"]["value"] == pytest.approx(-50.0)
    bad = run_cli("steer", "--sae", str(sae_dir), "--feature", "99", "--clamp", "1", "--prompt", PROMPT)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "featurescope: error: feature 99 is out of range: the SAE has features 0..7"]
