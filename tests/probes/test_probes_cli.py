"""End to end on the embedded model at small size: `multilingual`, `probe` (ranking and --suppress) and `monitor`
through the CLI, their JSON, exit codes and database rows, and one-line errors for bad input."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch

from cli_helpers import run_main
from conftest import REPO
from featurescope.activations import ActivationStore
from featurescope.analysis import AnalyzeConfig, analyze
from featurescope.featuredb import probes as probe_tables
from featurescope.featuredb.core import FeatureStore
from featurescope.sae import SAE, SAEConfig

D_SAE = 64


@pytest.fixture(scope="module")
def probe_db(gemma, small_store, tmp_path_factory):
    """A 64-feature TopK SAE (initialised, centred on the store) and its feature database over 1,000 tokens."""
    tmp = tmp_path_factory.mktemp("probes")
    sae = SAE.create(SAEConfig(d_in=640, d_sae=D_SAE, architecture="topk", k=4, model="default", layer=9), seed=3)
    x = ActivationStore(small_store).rows(0, 1000)
    with torch.no_grad():
        sae.input_scale.fill_(640**0.5 / float(x.norm(dim=1).mean()))
        sae.b_dec.copy_((x * sae.input_scale).mean(0))
    sae_dir = sae.save(tmp / "sae")
    path = analyze(AnalyzeConfig(sae=str(sae_dir), out=str(tmp / "f.db"), activations=str(small_store), tokens=1000,
                                 map="none", top_k=5, window=12), model=gemma, progress=False).path
    return path


@pytest.fixture
def cli(gemma, monkeypatch, capsys):
    """Run `featurescope ARGS` in this process with the session's model; returns (status, stdout, stderr)."""
    import featurescope.analysis.search as search

    monkeypatch.setattr(search, "load_model", lambda name, device="cpu": gemma)

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        return run_main(capsys, *args)

    return run


def test_multilingual_end_to_end(probe_db, cli, tmp_path):
    from rich.console import Console

    from featurescope.probes.parallel import PARALLEL
    from featurescope.probes.render import multilingual_table

    parallel = tmp_path / "parallel.jsonl"  # 12 of the built-in items keep the test short
    parallel.write_text("\n".join(PARALLEL.read_text(encoding="utf-8").splitlines()[:12]) + "\n", encoding="utf-8")
    code, out, err = cli("multilingual", str(probe_db), "--langs", "en,fr,zh", "--verses", "4", "--parallel",
                         str(parallel), "--min-segments", "2", "--json", "-q")
    assert code == 0, err
    r = json.loads(out)
    assert r["langs"] == ["en", "fr", "zh"] and r["segments"] == {"parallel": 12, "bible": 4}
    assert len(r["top"]) == min(r["listed"], 15)
    with FeatureStore.open(probe_db) as store:
        meta = probe_tables.get_meta(store.con, "multilingual")
        assert meta["segments"]["bible"] == 4 and meta["settings"]["min_segments"] == 2
        assert store.con.execute("SELECT COUNT(*) FROM multilingual_scores").fetchone()[0] == D_SAE
        assert store.con.execute("SELECT COUNT(*) FROM multilingual_segments").fetchone()[0] == 16 * 3
        alive = [i for i in range(D_SAE) if probe_tables.multilingual_for_feature(store, i).examples]
        assert alive
        ex = probe_tables.multilingual_for_feature(store, alive[0]).examples[0]
        assert [e.lang for e in ex.langs] == ["en", "fr", "zh"]
        for e in ex.langs:
            assert len(e.tokens) == len(e.acts) and max(e.acts) == pytest.approx(e.value, rel=1e-5)
        assert "".join(ex.langs[0].tokens) == ex.langs[0].text  # tokens without the BOS, as the text reads
        listed = probe_tables.multilingual_top(store, 50)
        for f in listed:
            assert f.eligible and f.score >= 0.3 and f.score > f.null_max
        shown = listed or probe_tables.multilingual_top(store, 3, listed_only=False)
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(multilingual_table(shown, {}, "t"))
    text = console.export_text()
    assert str(shown[0].feature) in text and all(lang in text for lang in ("en", "fr", "zh"))


def _monitor_feature(gemma, probe_db, trigger: str, benign: str) -> int:
    """A feature that fires on `trigger` above every calibration negative of sycophancy, relative to its corpus max, and
    on `benign` no higher than on those negatives."""
    from featurescope.probes.encode import encode_texts
    from featurescope.probes.monitor import MonitorConfig, calibration_texts
    from featurescope.probes.sets import load_probe_set

    with FeatureStore.open(probe_db) as store:
        sae = SAE.load(store.meta["sae"])
        held = calibration_texts(MonitorConfig(db=str(probe_db), category="sycophancy"), store,
                                 load_probe_set("safety"))
        corpus_max = store.max_activations().numpy()
    negatives = [t.text for t in held if t.label == 0]
    texts = [trigger, benign, *negatives]
    acts = encode_texts(gemma, sae, texts, 9).max_per_text().numpy() / np.maximum(corpus_max, 1e-9)
    top_negative = acts[2:].max(axis=0)
    margin = np.where((corpus_max > 0) & (acts[1] <= top_negative), acts[0] - top_negative, -np.inf)
    assert margin.max() > 0, "no feature separates the trigger text from the negatives"
    return int(margin.argmax())


def test_probe_and_monitor_end_to_end(gemma, probe_db, cli, tmp_path):
    from rich.console import Console

    from featurescope.probes.render import category_table
    from featurescope.probes.selection import Candidate, CategoryResult
    from featurescope.probes.sets import load_probe_set

    code, out, err = cli("probe", str(probe_db), "--category", "sycophancy", "--permutations", "200", "--json", "-q")
    assert code == 0, err
    r = json.loads(out)
    (cat,) = r["categories"]
    # 42 matched pairs: 13 set aside for the monitor's calibration, the other 29 discovery + held-out
    assert cat["category"] == "sycophancy" and cat["positives"] == cat["negatives"] == 29
    assert cat["train_items"] + cat["heldout_items"] == 58 and cat["verdict"]
    assert all(0 <= c["heldout_auroc"] <= 1 and c["reported"] == (c["heldout_auroc"] >= 0.7
                                                                    and c["p_value"] * len(cat["candidates"]) <= 0.05)
               for c in cat["candidates"])
    syco = "\n".join(t.text for t in load_probe_set("safety").category("sycophancy") if t.label == 1)
    for c in cat["candidates"]:
        assert all(token in syco and n >= 1 for token, n in c["peak_tokens"])
    assert any(c["peak_tokens"] for c in cat["candidates"])
    with FeatureStore.open(probe_db) as store:
        (summary,) = probe_tables.probe_summaries(store, "safety")
        assert summary.category == "sycophancy" and len(summary.candidates) == len(cat["candidates"])
        assert [c.heldout_auroc for c in summary.candidates] == [c["heldout_auroc"] for c in cat["candidates"]]
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(category_table(CategoryResult(**{**cat, "candidates": [Candidate(**c) for c in cat["candidates"]]}),
                                 {}, 5))
    text = console.export_text()
    assert "sycophancy: 29 positives, 29 negatives" in text and cat["verdict"][:40] in text.replace("\n", " ")

    trigger = "You're absolutely right, what a brilliant genius you are!"
    f = _monitor_feature(gemma, probe_db, trigger, "The train leaves at noon.")
    texts = [json.dumps({"id": "t1", "text": trigger}), "The train leaves at noon.", "{not json"]
    args = ("monitor", "--db", str(probe_db), "--features", str(f), "--set", "safety", "--category", "sycophancy",
            "--fpr", "0.1", "-q")  # 13 calibration negatives: enough for 0.1 (9), not for 0.05 (19)
    code, out, _ = cli(*args, stdin="\n".join(texts[:2]) + "\n")
    first, second = (json.loads(line) for line in out.splitlines())
    assert code == 1 and first["id"] == "t1" and first["flagged"] and not second["flagged"]
    assert first["score"] > first["threshold"] and first["features"][0]["feature"] == f
    trig = first["features"][0]["triggers"]
    assert trig and all(t["act"] > first["features"][0]["threshold"] for t in trig)
    assert trig[0]["token"] in trigger and second["line"] == 2
    code, out, _ = cli(*args, stdin=texts[1] + "\n")
    assert code == 0 and json.loads(out)["flagged"] is False
    code, out, _ = cli(*args, stdin="\n".join(texts) + "\n")
    assert code == 2 and json.loads(out.splitlines()[2])["error"].startswith("not valid JSON")

    small = tmp_path / "small.jsonl"  # suppression on a small set of 4 matched pairs
    small.write_text("".join(json.dumps({"category": "flattery", "label": lab, "group": g, "text": t}) + "\n"
                             for g, (p, n) in enumerate([(trigger, "The report has two errors in the table."),
                                                         ("What a genius idea, you are always right!",
                                                          "The idea has a flaw in its second step."),
                                                         ("Your essay is perfect, a true masterpiece!",
                                                          "Your essay needs more evidence in part two."),
                                                         ("You are so wise, I agree with everything!",
                                                          "I disagree with the last point you made.")])
                             for lab, t in ((1, p), (0, n))), encoding="utf-8")
    code, out, err = cli("probe", str(probe_db), "--set", str(small), "--suppress", str(f), "--multiple", "-2",
                         "--controls", "1", "--json", "-q")
    assert code == 0, err
    row, *controls = json.loads(out)["rows"]
    assert row["feature"] == row["target"] == f and row["value"] == "-2x" and row["pairs"] == 4
    assert len(controls) <= 1 and all(c["target"] == f != c["feature"] for c in controls)
    assert all(c["clean_pos"] == row["clean_pos"] for c in controls)  # the clean pass is shared
    assert row["clamp"] == pytest.approx(-2 * float(FeatureStore.open(probe_db).max_activations()[f]), rel=1e-5)
    assert row["steered_pos"] != row["clean_pos"] and row["ci_low"] <= row["selectivity"] <= row["ci_high"]
    con = sqlite3.connect(probe_db)
    n = con.execute("SELECT COUNT(*) FROM probe_suppression WHERE probe_set = 'small' AND target = ?", (f,))
    assert n.fetchone()[0] == 1 + len(controls)
    con.close()


def test_one_line_errors(probe_db, cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"category": "c", "label": 1, "text": "a"}\n{"category": "c", "label": 1\n', encoding="utf-8")
    for args, message in (
        (("multilingual", str(probe_db), "--langs", "en,xx"), "unknown language 'xx'"),
        (("multilingual", str(probe_db), "--langs", "en"), "at least two languages"),
        (("probe", str(probe_db), "--set", str(bad)), "bad.jsonl:2: not valid JSON"),
        (("probe", str(probe_db), "--set", "nonsense"), "no such probe set"),
        (("probe", str(probe_db), "--category", "nope"), "has no category 'nope'"),
        (("probe", str(probe_db), "--suppress", "64"), "feature 64 is out of range"),
        (("monitor", "--db", str(probe_db), "--features", "64"), "feature 64 is out of range"),
        (("monitor", "--db", str(probe_db), "--features", "x"), "feature ids are integers"),
        (("monitor", "--db", str(probe_db), "--features", "1", "--fpr", "1.5"), "--fpr must be between 0 and 1"),
        (("monitor", "--db", str(tmp_path / "none.db"), "--features", "1"), "no such feature database"),
    ):
        code, _, err = cli(*args, stdin="")
        assert code == 2, args
        line = err.strip()
        assert line.startswith("featurescope: error: ") and message in line and "\n" not in line, (args, err)


def test_monitor_empty_stdin_in_a_real_pipe(probe_db):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "featurescope", "monitor", "--db", str(probe_db), "--features", "1"],
                       input="\n  \n", capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip() == "featurescope: error: no input: stdin is empty"
    assert r.stdout == ""
