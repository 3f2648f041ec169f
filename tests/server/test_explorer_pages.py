"""The explorer's pages in headless Chromium against a live server on a free port: every page loads without
console errors, search finds features, links and the map navigate, steering generates, and corpus text full
of HTML is shown as text and never runs. Screenshots go to $FEATURESCOPE_SCREENSHOTS (`make screenshots`
sets docs/screenshots), else to a temporary folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from explorer_helpers import LABEL_PAYLOAD, build_db, launch_chromium, start_live_server
from featurescope.featuredb.core import FeatureStore

playwright_api = pytest.importorskip("playwright.sync_api")
TIMEOUT_MS = 60_000


ZH_PAYLOAD = "<img src=x onerror=\"window.__xss='multilingual'\">"


def _add_probe_tables(db: Path) -> None:
    """Cross-lingual scores (feature 0, with an HTML payload in its Chinese tokens) and one probe result."""
    import json

    from featurescope.featuredb import probes as probe_tables

    with FeatureStore.open(db) as store:
        d_sae = store.d_sae
    with probe_tables.update_db(db) as con:
        scores = [(i, 0.9 if i == 0 else 0.0, 0.8 if i == 0 else None, 0.1, 1, int(i == 0),
                   json.dumps({"en-zh": 0.9}), json.dumps({"en": 3, "zh": 3}), 0.0) for i in range(d_sae)]
        segments = [(0, "en", "parallel", "eiffel-tower", "The Eiffel Tower", json.dumps(["The", " Eiffel", " Tower"])),
                    (0, "zh", "parallel", "eiffel-tower", "埃菲尔铁塔", json.dumps(["埃菲尔", ZH_PAYLOAD]))]
        examples = [(0, 0, "en", 0, 3.0, probe_tables.floats_blob([0, 3.0, 1.5])),
                    (0, 0, "zh", 0, 2.0, probe_tables.floats_blob([2.0, 1.0]))]
        probe_tables.replace_multilingual(con, {"langs": ["en", "zh"], "null_max": 0.2}, scores, segments, examples)
        probe_tables.replace_probe(con, "safety", {"categories": ["deception"]},
                          [("safety", "deception", 42, 42, 42, 42, 0.8, 0.75, 1, "1 feature generalises")],
                          [("safety", "deception", 0, 0, 0.8, 0.78, 0.001, 0.79, 1, "[]")])


@pytest.fixture(scope="module")
def explorer_db(gemma, tmp_path_factory):
    built = build_db(gemma, tmp_path_factory.getbasetemp())
    _add_probe_tables(built.db)
    return built


@pytest.fixture(scope="module")
def server(explorer_db, gemma):
    srv = start_live_server(explorer_db, gemma)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with playwright_api.sync_playwright() as p:
        context = launch_chromium(p, tmp_path_factory.mktemp("chromium-profile"))
        context.set_default_timeout(TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("FEATURESCOPE_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Page:
    """A browser tab that records console errors and uncaught exceptions."""

    def __init__(self, page, base: str) -> None:
        self.page, self.base, self.errors = page, base.rstrip("/"), []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def open(self, path: str, ready: str):
        response = self.page.goto(self.base + path)
        self.page.wait_for_selector(ready, state="attached")
        return response

    def xss(self):
        return self.page.evaluate("window.__xss")


@pytest.fixture
def tab(browser, server):
    t = Page(browser.new_page(), server.url)
    yield t
    assert t.xss() is None, "a corpus payload ran"
    t.page.close()


@pytest.fixture(scope="module")
def features(explorer_db):
    """(a well-labelled feature, a feature whose top contexts hold a <script> payload)."""
    with FeatureStore.open(explorer_db.db) as store:
        best = store.top(by="label-score", n=1)[0].id
        payload = next(i for i in range(store.d_sae)
                       if any("<script>" in "".join(e.tokens) for e in store.examples(i, "top")))
    return best, payload


def test_every_page_loads_without_console_errors(tab, features, explorer_db, shots):
    best, _ = features
    pages = [("overview", "/overview", "#quality"), ("feature", f"/feature/{best}", "#top .example"),
             ("map", f"/map?feature={best}", "#plot[data-ready='1']"), ("api", "/docs", ".endpoint")]
    for name, path, ready in pages:
        response = tab.open(path, ready)
        assert response.status == 200
        assert tab.errors == [], (name, tab.errors)
        tab.page.screenshot(path=shots / f"{name}.png")
    tab.open("/", "#quality")
    assert tab.page.url.endswith("/overview")


def test_label_search_finds_features_and_links_through(tab, explorer_db):
    tab.open("/search", "#label-query")
    tab.page.fill("#label-query", "onerror")
    tab.page.press("#label-query", "Enter")
    link = tab.page.locator(f"#label-results a[href='/feature/{explorer_db.payload_feature}']")
    link.click()
    tab.page.wait_for_url(re.compile(rf"/feature/{explorer_db.payload_feature}$"))
    tab.page.wait_for_selector("#label")
    assert tab.page.text_content("#label") == LABEL_PAYLOAD  # shown as text ...
    assert tab.page.locator("main img, main b").count() == 0  # ... and never parsed as HTML
    assert tab.errors == []


def test_text_search_shows_tokens_and_the_features_that_fire(tab, shots):
    tab.open("/search", "#text")
    text = "The Golden Gate Bridge <script>window.__xss = 'search'</script>"
    tab.page.fill("#text", text)
    tab.page.press("#text", "Control+Enter")
    tab.page.wait_for_selector("#hits .hit")
    assert tab.page.locator("#hits .hit").count() > 0
    assert tab.page.text_content("#text-tokens") == "<bos>" + text
    tab.page.fill("#label-query", "sample")
    tab.page.press("#label-query", "Enter")
    tab.page.wait_for_selector("#label-results")
    tab.page.evaluate("window.scrollTo(0, 0)")
    tab.page.screenshot(path=shots / "search.png")
    tab.page.locator("#hits .hit button").nth(1).click()
    assert tab.page.locator("#hits .hit").nth(1).get_attribute("aria-selected") == "true"
    href = tab.page.locator("#hits .hit a").first.get_attribute("href")
    tab.page.locator("#hits .hit a").first.click()
    tab.page.wait_for_url(re.compile(re.escape(href) + "$"))
    assert tab.errors == []


def test_clicking_a_neighbour_opens_it(tab, features):
    best, _ = features
    tab.open(f"/feature/{best}", "#neighbours a")
    first = tab.page.locator("#neighbours a").first
    target = int(first.get_attribute("href").rsplit("/", 1)[1])
    first.click()
    tab.page.wait_for_url(re.compile(rf"/feature/{target}$"))
    tab.page.wait_for_selector("#top")
    assert tab.page.text_content("h1") == f"Feature {target}"
    assert tab.errors == []


def test_map_renders_every_point_and_a_click_opens_the_feature(tab, explorer_db):
    tab.open("/map", "#plot[data-ready='1']")
    points = tab.page.locator("#plot .scatterlayer .trace").first.locator(".point")
    sizes = tab.page.evaluate("() => document.getElementById('plot').data.map(t => t.x.length)")
    assert points.count() == sizes[0] and sizes[0] + sizes[3] == 256  # fired, never fired
    box = points.nth(17).bounding_box()
    tab.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tab.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tab.page.wait_for_url(re.compile(r"/feature/\d+$"))
    assert tab.errors == []


def test_map_highlights_the_neighbours_and_escapes_hover_labels(tab, explorer_db):
    f = explorer_db.payload_feature
    tab.open(f"/map?feature={f}", "#plot[data-ready='1']")
    assert tab.page.locator("#map-neighbours li").count() == 10
    assert tab.page.locator("#plot .scatterlayer .trace").nth(1).locator(".point").count() == 10
    assert tab.page.locator("#plot .scatterlayer .trace").nth(2).locator(".point").count() == 1
    tab.page.evaluate("f => { const p = document.getElementById('plot'); const i = p.data[0].customdata.indexOf(f); "
                      "Plotly.Fx.hover(p, [{curveNumber: 0, pointNumber: i}]); }", f)
    tab.page.wait_for_selector("#plot .hoverlayer .hovertext")
    hover = tab.page.text_content("#plot .hoverlayer")
    assert f"#{f}" in hover and "<img src=x onerror=" in hover and "<b>bold</b>" in hover
    assert tab.page.locator("img").count() == 0
    assert tab.errors == []


def test_corpus_html_is_shown_as_text_and_never_runs(tab, features):
    _, payload = features
    tab.open(f"/feature/{payload}", "#top .example")
    assert "<script>window.__xss" in tab.page.text_content("#top")
    assert tab.page.locator("main script, main img, img").count() == 0
    tab.open("/overview", "#quality")
    tab.open("/search?q=onerror", "#label-results")
    assert "<img src=x" in tab.page.text_content("#label-results")
    assert tab.page.locator("main img").count() == 0
    assert tab.errors == []


def test_feature_page_shows_languages_side_by_side_and_probe_results(tab):
    tab.open("/feature/0", "#multilingual .card")
    rows = tab.page.locator("#multilingual .card tr")
    assert [rows.nth(i).locator("td").first.text_content() for i in range(rows.count())] == ["en", "zh"]
    assert ZH_PAYLOAD in tab.page.text_content("#multilingual")  # the payload is text, not an element
    assert tab.page.locator("#multilingual img").count() == 0
    assert "cross-lingual score 0.9" in tab.page.text_content("#multilingual")
    assert "deception" in tab.page.text_content("#probes")
    assert tab.errors == []


def test_unknown_feature_page_says_so(tab):
    response = tab.open("/feature/256", ".error")
    assert response.status == 404
    assert "out of range" in tab.page.text_content(".error")


def test_steering_playground_generates_side_by_side(tab, features, shots):
    f = features[0]
    tab.open(f"/steer?feature={f}", ".feature-row a")
    tab.page.fill("#max-new", "6")
    tab.page.click("button.primary")
    tab.page.wait_for_selector("#steer-status[data-state='done']")
    assert tab.page.text_content("#baseline").startswith("The Golden Gate Bridge is")
    assert len(tab.page.text_content("#steered")) > len("The Golden Gate Bridge is")
    tab.page.screenshot(path=shots / "steer.png")
    assert tab.errors == []


def test_keyboard_shortcuts(tab):
    tab.open("/feature/5", "#top")
    tab.page.keyboard.press("ArrowRight")
    tab.page.wait_for_url(re.compile(r"/feature/6$"))
    tab.page.wait_for_selector("#top")
    tab.page.keyboard.press("f")
    assert tab.page.evaluate("document.activeElement.id") == "goto"
    tab.page.keyboard.type("12")
    tab.page.keyboard.press("Enter")
    tab.page.wait_for_url(re.compile(r"/feature/12$"))
    tab.page.wait_for_selector("#top")
    tab.page.keyboard.press("m")
    tab.page.wait_for_url(re.compile(r"/map$"))
    tab.page.wait_for_selector("#plot[data-ready='1']")
    tab.page.keyboard.press("?")
    assert tab.page.locator("dialog#help").get_attribute("open") is not None
    assert tab.errors == []
