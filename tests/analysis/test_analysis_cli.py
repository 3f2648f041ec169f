"""The analysis commands: analyze, feature, search, neighbors, top — output and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from featurescope.activations import ActivationStore
from featurescope.analysis import AnalyzeConfig, analyze
from featurescope.cli import build_parser, main
from featurescope.sae import SAE, SAEConfig


def _sae(store, path):
    """A freshly initialised TopK SAE of 64 features, centred on the store's activations."""
    sae = SAE.create(SAEConfig(d_in=640, d_sae=64, architecture="topk", k=4, model="default", layer=9), seed=2)
    x = ActivationStore(store).rows(0, 1000)
    with torch.no_grad():
        sae.input_scale.fill_(640**0.5 / float(x.norm(dim=1).mean()))
        sae.b_dec.copy_((x * sae.input_scale).mean(0))
    return sae.save(path)


@pytest.fixture(scope="module")
def db(gemma, small_store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    sae = _sae(small_store, tmp / "sae")
    return analyze(AnalyzeConfig(sae=str(sae), out=str(tmp / "f.db"), activations=str(small_store), tokens=1000,
                                 map="pca", top_k=5, window=12), model=gemma, progress=False).path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse
        code = int(e.code)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_the_analysis_commands():
    text = build_parser().format_help()
    for command in ("analyze", "explain", "feature", "search", "neighbors", "top"):
        assert command in text
    analyze_help = build_parser().parse_args(["analyze", "x"])
    assert analyze_help.out == "features.db" and analyze_help.tokens is None and analyze_help.top_k == 20


def test_reading_commands(db, capsys):
    code, out, _ = _run(capsys, "feature", str(db), "3")
    assert code == 0 and "Feature 3" in out and "top contexts" in out and "logit effects" in out
    code, out, _ = _run(capsys, "feature", str(db), "3", "--json")
    feature = json.loads(out)
    assert feature["id"] == 3 and feature["labels"][0]["kind"] == "auto"
    assert all(len(e["tokens"]) == len(e["acts"]) == 12 for e in feature["top"])
    code, out, _ = _run(capsys, "top", str(db), "--by", "max", "-n", "5", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["max"] for r in rows] == sorted((r["max"] for r in rows), reverse=True)
    code, out, _ = _run(capsys, "top", str(db), "--by", "label-score")
    assert code == 0 and "features with the highest label-score" in out
    code, out, _ = _run(capsys, "neighbors", str(db), str(rows[0]["id"]), "--json")
    near = json.loads(out)
    assert len(near) == 10 and near[0]["cosine"] >= near[-1]["cosine"]
    word = feature["labels"][0]["text"].split(",")[0].split(" ")[0]
    code, out, _ = _run(capsys, "search", str(db), "--label", word, "--json")
    assert code == 0 and any(r["id"] == 3 for r in json.loads(out))


def test_one_line_errors(db, capsys, tmp_path):
    (tmp_path / "junk.db").write_bytes(b"\x00junk" * 100)
    for args, message in (
        (("feature", str(db), "64"), "feature 64 is out of range"),
        (("feature", str(db), "-1"), "out of range"),
        (("feature", str(db), "x"), "must be an integer"),
        (("feature", str(tmp_path / "junk.db"), "1"), "not a featurescope feature database"),
        (("neighbors", str(tmp_path / "none.db"), "1"), "no such feature database"),
        (("search", str(db), "   "), "empty search text"),
        (("search", str(db), "--label", ""), "empty search text"),
        (("search", str(db)), "give a text"),
    ):
        code, _, err = _run(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("featurescope: error: ") and message in err, args
    code, _, err = _run(capsys, "top", str(db), "--by", "colour")
    assert code == 2 and "invalid choice" in err


def test_analyze_and_search_in_subprocesses(small_store, tmp_path):
    sae = _sae(small_store, tmp_path / "sae")
    out = tmp_path / "cli.db"
    result = run_cli("-q", "analyze", str(sae), "--activations", str(small_store), "--tokens", "800", "--out", str(out),
                     "--map", "none", "--top-k", "4")
    assert result.returncode == 0, result.stderr
    assert f"{out}: 64 features" in result.stdout and "over 800 tokens" in result.stdout
    result = run_cli("search", str(out), "The bridge crosses the river near the old town.", "-n", "5", "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["tokens"][0] == "<bos>" and len(found["tokens"]) == len(found["token_ids"])
    assert 1 <= len(found["hits"]) <= 5
    for hit in found["hits"]:
        assert len(hit["acts"]) == len(found["tokens"]) and hit["acts"][0] == 0.0  # BOS is never encoded
        assert hit["max"] == pytest.approx(max(hit["acts"])) and hit["max"] > 0
    assert [h["max"] for h in found["hits"]] == sorted((h["max"] for h in found["hits"]), reverse=True)
