"""The SAEs page: `featurescope eval` of three SAEs (ours, a SAELens copy whose folder name is an HTML payload, a
weaker one) stores its comparison in the test database with --db; the explorer serves it at /api/saes and draws the
table and the Pareto plots in headless Chromium, the payload shown as text."""

from __future__ import annotations

import contextlib
import io
import json
import os

import httpx
import pytest
import torch

from explorer_helpers import build_db, launch_chromium, start_server
from featurescope.cli import main
from featurescope.sae import SAE
from featurescope.sae.io import export

playwright_api = pytest.importorskip("playwright.sync_api")
PAYLOAD = "<img src=x onerror=\"window.__xss='sae'\">"


@pytest.fixture(scope="module")
def compared(gemma, tmp_path_factory):
    """(the database, the comparison folder, what the command printed)."""
    built = build_db(gemma, tmp_path_factory.getbasetemp())
    folder = tmp_path_factory.mktemp("saes")
    saelens = export(SAE.load(built.sae_dir), folder / PAYLOAD, "saelens")
    weaker = SAE.load(built.sae_dir)
    with torch.no_grad():
        weaker.W_dec.mul_(3.0)  # overshoots: far from the activations
    weaker.save(folder / "weaker")
    argv = ["-q", "eval", str(built.sae_dir), str(saelens), str(folder / "weaker"), "--activations",
            str(built.db.parent / "acts"), "--rows", "500", "--ce-contexts", "2", "--ood-contexts", "1",
            "--batch-size", "2", "--compare-out", str(folder / "out"), "--db", str(built.db)]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr("featurescope.evaluate.run.load_model", lambda *a, **k: gemma)  # the session's model, by name
        assert main(argv) == 0
    return built.db, folder / "out", printed.getvalue()


@pytest.fixture(scope="module")
def server(compared):
    srv = start_server(compared[0])
    yield srv
    srv.stop()


def test_the_command_prints_the_table_and_stores_what_it_wrote(compared, server):
    _, out, printed = compared
    assert "SAE comparison" in printed and "KL to clean" in printed
    assert {"weaker", PAYLOAD} <= {line.split("│")[1].strip() for line in printed.splitlines() if line.count("│") > 5}
    data = json.loads((out / "compare.json").read_text())
    assert [s["format"] for s in data["saes"]] == ["featurescope", "saelens", "featurescope"]
    api = httpx.get(f"{server.url.rstrip('/')}/api/saes", timeout=30).json()
    assert api["available"] and [s["name"] for s in api["saes"]] == ["sae", PAYLOAD, "weaker"]
    assert [s["l0"] for s in api["saes"]] == [s["l0"] for s in data["saes"]]
    ours, copy, weaker = api["saes"]
    assert copy["fvu"] == pytest.approx(ours["fvu"], rel=1e-3) and weaker["fvu"] > ours["fvu"]
    assert ours["kl"] < weaker["kl"] and api["layer"] == 9
    assert ours["l0"] == weaker["l0"] and not weaker["front_ce"] and (ours["front_ce"] or copy["front_ce"])
    assert "eval" not in ours


def test_saes_page_shows_the_table_and_the_pareto_plots(server, tmp_path_factory):
    shots = os.environ.get("FEATURESCOPE_SCREENSHOTS")
    with playwright_api.sync_playwright() as p:
        context = launch_chromium(p, tmp_path_factory.mktemp("chromium-saes"))
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            assert page.goto(f"{server.url.rstrip('/')}/saes").status == 200
            page.wait_for_selector("#plot[data-ready='1']", timeout=60_000)
            rows = page.locator("#sae-table tbody tr")
            assert rows.count() == 3
            assert rows.nth(1).locator("td").first.text_content() == PAYLOAD  # the name, as text
            stars = [rows.nth(i).locator("td").last.text_content() for i in range(3)]
            assert stars[2] == "" and "★" in stars[:2]  # the weaker SAE is dominated (same L0, less CE recovered)
            assert page.locator("main img").count() == 0 and page.evaluate("window.__xss") is None
            assert page.locator("#plot .scatterlayer .point").count() == 6  # three SAEs in each plot
            assert "KL(clean ‖ spliced)" in page.text_content("#measured-on")
            if shots:
                page.screenshot(path=f"{shots}/saes.png", full_page=True)
            page.keyboard.press("o")
            page.wait_for_url("**/overview")
            page.keyboard.press("e")
            page.wait_for_url("**/saes")
            assert errors == []
        finally:
            context.close()
