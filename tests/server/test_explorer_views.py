"""The explorer's list, cross-lingual and safety pages, the feature page's extras (try-on-your-text, JSON export,
no steering of dead features), map search and colour scale, dark mode and a 390 px screen, in headless Chromium."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from test_explorer_pages import Page, browser, explorer_db, features, server, shots  # noqa: F401  (fixtures)

from featurescope.featuredb.core import FeatureStore

playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def tab(browser, server):  # noqa: F811
    t = Page(browser.new_page(), server.url)
    yield t
    t.page.close()


@pytest.fixture(scope="module")
def densities(explorer_db):  # noqa: F811
    with FeatureStore.open(explorer_db.db) as store:
        return store.densities().tolist()


def test_features_list_filters_sorts_pages_and_keeps_the_url(tab, densities, shots):  # noqa: F811
    tab.open("/features", "#feature-table tbody tr")
    assert tab.page.text_content("#feature-count").startswith("256 features · page 1 of 6")
    assert tab.page.locator("#feature-table tbody tr").count() == 50
    tab.page.screenshot(path=shots / "features.png")
    tab.page.click("button.sort[data-sort='density']")  # highest density first
    tab.page.wait_for_selector("button.sort[data-sort='density'][aria-sort='descending']")
    first = int(tab.page.locator("#feature-table tbody tr a").first.text_content().lstrip("#"))
    assert densities[first] == max(densities)
    tab.page.select_option("#show", "dead")
    tab.page.click("#filters button[type=submit]")
    tab.page.wait_for_function("n => document.querySelector('#feature-count').textContent.startsWith(n)",
                               arg=f"{sum(d == 0 for d in densities)} features")
    tab.page.select_option("#show", "all")
    tab.page.fill("#min-density", "1")
    tab.page.fill("#max-density", "5")
    tab.page.click("#filters button[type=submit]")
    want = sum(0.01 <= d <= 0.05 for d in densities)
    tab.page.wait_for_function("n => document.querySelector('#feature-count').textContent.startsWith(n)",
                               arg=f"{want} features")
    assert "min=1" in tab.page.url and "max=5" in tab.page.url and "sort=density" in tab.page.url
    tab.open(tab.page.url.split(tab.base, 1)[1], "#feature-table")
    assert tab.page.text_content("#feature-count").startswith(f"{want} features")
    assert tab.page.input_value("#min-density") == "1"
    assert tab.errors == []


def test_cross_lingual_and_safety_pages(tab, server, shots):  # noqa: F811
    tab.open("/multilingual", "#ml-features .ml-feature")
    assert "Feature 0" in tab.page.text_content("#ml-features")
    assert tab.page.locator("#ml-features img").count() == 0  # the Chinese payload stays text
    tab.page.screenshot(path=shots / "multilingual.png")
    tab.open("/safety", "#categories .category")
    assert "deception" in tab.page.text_content("#categories")
    assert tab.page.locator("#categories a[href='/feature/0']").count() == 1
    text = "The Golden Gate Bridge spans the strait near San Francisco."
    acts = httpx.post(server.url + "api/activations", json={"text": text, "features": [0]}).json()["features"][0]
    peak = max(acts["acts"]) / acts["corpus_max"] if acts["corpus_max"] > 0 else 0.0
    for threshold in (0.01, 0.99):
        tab.page.fill("#monitor-text", text)
        tab.page.fill("#monitor-threshold", str(threshold))
        tab.page.click("#monitor button[type=submit]")
        tab.page.wait_for_selector("#monitor-verdict")
        assert tab.page.get_attribute("#monitor-verdict", "data-flagged") == json.dumps(peak > threshold)
        assert not re.search(r"(?<!alignment )\bnull\b", tab.page.text_content("#monitor-out"))
    tab.page.screenshot(path=shots / "safety.png")
    assert tab.errors == []


def test_feature_page_try_box_export_and_dead_features(tab, server, features, densities):  # noqa: F811
    best = features[0]
    tab.open(f"/feature/{best}", "#try-text")
    assert tab.page.locator("#steer-link").count() == 1
    tab.page.fill("#try-text", "The Golden Gate Bridge spans the strait near San Francisco.")
    tab.page.click("#try button[type=submit]")
    tab.page.wait_for_selector("#try-out .tokens")
    assert tab.page.locator("#try-out .tok").count() > 5
    assert "of its corpus max" in tab.page.text_content("#try-summary") or "does not fire" in \
        tab.page.text_content("#try-summary")
    href = tab.page.get_attribute("#export-json", "href")
    assert httpx.get(server.url + href.lstrip("/")).json()["id"] == best
    dead = next((i for i, d in enumerate(densities) if d == 0), None)
    if dead is not None:
        tab.open(f"/feature/{dead}", "#top")
        assert tab.page.locator("#steer-link").count() == 0
        assert "never fired" in tab.page.text_content("main")
    assert tab.errors == []


def test_map_search_dead_features_apart_and_bad_ids(tab, densities):
    tab.open("/map?q=sample", "#plot[data-ready='1']")
    data = tab.page.evaluate("() => document.getElementById('plot').data.map(t => [t.name, t.x.length])")
    names = dict(data)
    dead = sum(d == 0 for d in densities)
    assert data[0][1] == 256 - dead and names[f"never fired ({dead})"] == dead
    assert not re.search(r"(?<!alignment )\bnull\b", tab.page.text_content("#panel"))
    found = tab.page.locator("#map-matches li").count()
    assert found > 0 and names["matches"] == found
    colours = tab.page.evaluate("() => document.getElementById('plot').data[0].marker.color")
    assert min(colours) > -8  # never-fired features no longer stretch the scale
    tab.open("/map?feature=abc", "#plot[data-ready='1']")
    assert '"abc" is not a feature id' in tab.page.text_content("main .error")
    assert not any("NaN" in e for e in tab.errors)


def test_dark_mode_and_a_phone_screen(browser, server, features):  # noqa: F811
    best = features[0]
    page = browser.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    try:
        t = Page(page, server.url)
        for path, ready in (("/overview", "#quality"), (f"/feature/{best}", "#top .example"),
                            ("/features", "#feature-table"), ("/steer", ".feature-row"), ("/safety", "#categories"),
                            ("/multilingual", "#ml-features"), ("/docs", ".endpoint")):
            t.open(path, ready)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (path, width)
            assert not re.search(r"(?<!alignment )\bnull\b", page.text_content("main")), path  # a null appended as text
        t.open("/search", "#text")
        page.fill("#text", "The Golden Gate Bridge spans the strait near San Francisco.")
        page.press("#text", "Control+Enter")
        page.wait_for_selector("#hits .hit")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert re.fullmatch(r"rgb\((\d+), (\d+), (\d+)\)", background)
        assert sum(int(c) for c in re.findall(r"\d+", background)) < 150  # dark
        assert t.errors == []
    finally:
        page.close()


def test_every_page_script_parses(tmp_path):
    """A syntax error in one module leaves its page blank with no server-side trace: check them all with node."""
    import shutil
    import subprocess
    from pathlib import Path

    import featurescope.server

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    folder = Path(featurescope.server.__file__).parent / "static" / "js"
    for script in sorted(folder.glob("*.js")):
        copy = tmp_path / f"{script.stem}.mjs"  # .mjs: parsed as an ES module, as the pages load it
        copy.write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
        r = subprocess.run([node, "--check", str(copy)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (script.name, r.stderr)
