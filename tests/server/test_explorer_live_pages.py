"""The explorer's live views in headless Chromium: streamed steering (tokens appear while it runs, cancel stops
it on the server, sweeps in columns, state restored from the URL), search served during a generation, and the
friendly error pages."""

from __future__ import annotations

import time

import pytest
from test_explorer_pages import Page, browser, explorer_db, features, server, shots  # noqa: F401  (fixtures)

from explorer_helpers import running_generations

playwright_api = pytest.importorskip("playwright.sync_api")
BASELINE_GROWN = "n => { const b = document.querySelector('#baseline'); return !!b && b.textContent.length > n; }"


@pytest.fixture
def tab(browser, server):  # noqa: F811
    t = Page(browser.new_page(), server.url)
    yield t
    t.page.close()


def test_steering_streams_tokens_and_cancel_stops_the_server(tab, server, features):  # noqa: F811
    f = features[0]
    tab.open(f"/steer?feature={f}&n=200", ".feature-row a")
    tab.page.click("button.primary")
    tab.page.wait_for_function(BASELINE_GROWN, arg=len("The Golden Gate Bridge is"))
    assert tab.page.get_attribute("#steer-status", "data-state") == "running"  # tokens came before the end
    assert running_generations(server) == 1
    tab.page.click("#cancel")
    tab.page.wait_for_selector("#steer-status[data-state='cancelled']", timeout=20_000)
    deadline = time.monotonic() + 10
    while running_generations(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_generations(server) == 0
    assert tab.page.is_enabled("button.primary") and not tab.page.is_enabled("#cancel")
    assert tab.errors == []


def test_sweep_columns_and_the_url_keeps_the_form(tab, features, shots):  # noqa: F811
    f = features[0]
    tab.open(f"/steer?feature={f}&sweep=1x,2x&n=4", ".feature-row a")
    tab.page.fill("#prompt", "My favourite city is")
    tab.page.check("#chat")
    tab.page.uncheck("#chat")
    tab.page.click("button.primary")
    tab.page.wait_for_selector("#steer-status[data-state='done']")
    titles = tab.page.locator(".gen-card h3").all_text_contents()
    assert titles == ["Baseline", f"Steered: #{f} 1x", f"Steered: #{f} 2x"]
    assert tab.page.locator(".gen-card.complete").count() == 3
    assert "null" not in tab.page.text_content("main")
    tab.page.screenshot(path=shots / "steer-sweep.png")
    url = tab.page.url
    assert "prompt=My+favourite+city+is" in url and f"feature={f}" in url and "sweep=1x%2C2x" in url
    tab.open(url.split(tab.base, 1)[1], ".feature-row a")
    assert tab.page.input_value("#prompt") == "My favourite city is"
    assert tab.page.is_checked("#sweep-on") and tab.page.input_value("#sweep") == "1x,2x"
    assert tab.page.input_value("#max-new") == "4"
    assert tab.errors == []


def test_search_answers_while_a_generation_streams(tab, browser, server, features):  # noqa: F811
    f = features[0]
    tab.open(f"/steer?feature={f}&n=200", ".feature-row a")
    tab.page.click("button.primary")
    tab.page.wait_for_function(BASELINE_GROWN, arg=30)
    other = Page(browser.new_page(), server.url)
    try:
        other.open("/search", "#text")
        other.page.fill("#text", "The Golden Gate Bridge spans the strait.")
        t0 = time.monotonic()
        other.page.press("#text", "Control+Enter")
        other.page.wait_for_selector("#hits .hit", timeout=15_000)
        took = time.monotonic() - t0
        assert running_generations(server) == 1  # the generation was still going meanwhile
        assert took < 5, took
    finally:
        other.page.close()
    tab.page.click("#cancel")
    tab.page.wait_for_selector("#steer-status[data-state='cancelled']", timeout=20_000)


def test_bad_links_get_friendly_pages(tab):
    for path, status in (("/feature/abc", 400), ("/feature/1.5", 400), ("/nonexistent", 404)):
        response = tab.open(path, "main .error")
        assert response.status == status
        assert tab.page.locator("header.nav").count() == 1  # the usual navigation bar
        assert "detail" not in tab.page.text_content("main")
    tab.open("/steer?feature=abc&feature=3", ".feature-row a")
    assert '"abc"' in tab.page.text_content("#bad-features")
    assert tab.page.locator(".feature-row").count() == 1


def test_search_colours_by_corpus_max_shows_peaks_and_the_token_view(tab, shots):  # noqa: F811
    tab.open("/search", "#text")
    assert tab.page.input_value("#by") == "relative"
    tab.page.fill("#text", "The Golden Gate Bridge spans the strait near San Francisco.")
    tab.page.press("#text", "Control+Enter")
    tab.page.wait_for_selector("#hits .hit")
    assert "peaks on" in tab.page.text_content("#hits .hit .peak-token")
    # full colour only at the feature's corpus max: a hit at r of its max gets alpha 0.12 + 0.78·r
    top = tab.page.evaluate("() => { const t = [...document.querySelectorAll('#text-tokens .tok')];"
                            "return Math.max(...t.map(s => { const m = s.style.backgroundColor.match(/[\\d.]+\\)$/);"
                            "return m ? parseFloat(m[0]) : 0; })); }")
    rel = float(tab.page.get_attribute("#hits .hit .bar-cell", "title").split("%")[0]) / 100
    assert top == pytest.approx(0.12 + 0.78 * min(rel, 1), abs=0.01)
    tab.page.locator("#text-tokens .tok").nth(4).click()
    tab.page.wait_for_selector("#token-hits")
    assert "Features on token 4" in tab.page.text_content("#token-view")
    tab.page.screenshot(path=shots / "search-token.png")
    assert "text=The+Golden+Gate" in tab.page.url
    tab.open(tab.page.url.split(tab.base, 1)[1], "#hits .hit")
    assert tab.page.input_value("#text").startswith("The Golden Gate Bridge")
    assert tab.errors == []
