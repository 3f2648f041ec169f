"""`featurescope demo`: how it decides to serve, and (slow) the whole tiny pipeline twice, the second time fast,
with every view's data: a UMAP map, multilingual scores and the safety probes."""

from __future__ import annotations

import io
import time

import pytest

from conftest import run_cli
from featurescope.demo import SCALES, serve_mode
from featurescope.featuredb.core import FeatureStore
from featurescope.featuredb.probes import get_meta


def test_serve_mode_auto_checks_under_ci_or_without_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.delenv("CI", raising=False)
    assert serve_mode("auto") == "forever"
    monkeypatch.setenv("CI", "true")
    assert serve_mode("auto") == "check"
    monkeypatch.delenv("CI")
    monkeypatch.setattr("sys.stdin", io.StringIO())
    assert serve_mode("auto") == "check"
    assert serve_mode("forever") == "forever" and serve_mode("no") == "no"
    assert SCALES["small"].tokens < SCALES["full"].tokens


@pytest.mark.slow
def test_tiny_demo_runs_every_step_then_reruns_straight_to_serving(tmp_path):
    args = ("demo", "-q", "--scale", "tiny", "--out", str(tmp_path / "demo"), "--serve", "check", "--port", "0")
    t0 = time.monotonic()
    first = run_cli(*args)
    first_s = time.monotonic() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    assert "answered" in first.stdout and "http://127.0.0.1:" in first.stdout
    for name in ("acts", "sae/cfg.json", "features.db", "eval.json"):
        assert (tmp_path / "demo" / name).exists(), name
    assert "[demo] multilingual:" in first.stdout and "[demo] safety probes:" in first.stdout
    with FeatureStore.open(tmp_path / "demo" / "features.db") as store:
        assert store.meta["map_method"] == "umap"
        assert get_meta(store.con, "multilingual")["langs"] and get_meta(store.con, "probe:safety")["categories"]
        assert store.con.execute("SELECT COUNT(*) FROM multilingual_scores").fetchone()[0] > 0
    t0 = time.monotonic()
    second = run_cli(*args)
    second_s = time.monotonic() - t0
    assert second.returncode == 0, second.stderr[-3000:]
    assert "(0 new)" in second.stdout and "answered" in second.stdout
    assert "multilingual: stored already" in second.stdout and "safety probes: stored already" in second.stdout
    assert second_s < first_s
