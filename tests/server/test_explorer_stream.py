"""Streamed steering (token events, sweep columns, cancel, the bound on generations, search served meanwhile),
the fair model lock, and the HTML error pages, against a live explorer with the embedded model."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from explorer_helpers import build_db, running_generations, start_live_server
from featurescope.server.generation import FairLock, ThreadOnly


@pytest.fixture(scope="module")
def explorer_db(gemma, tmp_path_factory):
    return build_db(gemma, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(explorer_db, gemma):
    srv = start_live_server(explorer_db, gemma)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def _steer_body(feature: int, values: list[str], n: int) -> dict:
    return {"prompt": "The Golden Gate Bridge is", "columns": [[{"feature": feature, "value": v}] for v in values],
            "max_new_tokens": n}


def _events(lines) -> list[dict]:
    return [json.loads(line) for line in lines if line.strip()]


def _texts(events: list[dict], columns: int) -> list[str]:
    texts = [""] * columns
    for e in events:
        if e["event"] == "token":
            texts[e["column"]] = e["text"] if e.get("replace") else texts[e["column"]] + e["text"]
    return texts


def test_stream_matches_the_one_shot_steer_and_sweeps_columns(http):
    r = http.post("/api/steer/stream", json=_steer_body(3, ["5x", "-2x"], 6))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    events = _events(r.text.splitlines())
    start = events[0]
    assert start["event"] == "start" and [c["title"] for c in start["columns"]] == ["baseline", "#3 5x", "#3 -2x"]
    assert events[-1] == {"event": "done", "cancelled": False}
    assert sum(e["event"] == "token" for e in events) >= 6  # tokens arrive one by one, not at the end
    assert [e["tokens"] for e in events if e["event"] == "column"] == [6, 6, 6]
    texts = _texts(events, 3)
    for i, value in ((1, "5x"), (2, "-2x")):
        one = http.post("/api/steer", json={"prompt": "The Golden Gate Bridge is", "max_new_tokens": 6,
                                            "features": [{"feature": 3, "value": value}]}).json()
        assert texts[0] == one["baseline"] and texts[i] == one["steered"]
        assert start["columns"][i]["values"] == {"3": pytest.approx(one["values"]["3"])}


def test_cancel_stops_the_generation_on_the_server(http, server):
    t0 = time.monotonic()
    with http.stream("POST", "/api/steer/stream", json=_steer_body(3, ["5x"], 200)) as r:
        lines = r.iter_lines()
        start = json.loads(next(lines))
        first = json.loads(next(lines))
        assert first["event"] == "token"
        assert http.post(f"/api/steer/jobs/{start['job']}/cancel").json()["cancelled"] is True
        rest = _events(lines)
    assert rest[-1] == {"event": "done", "cancelled": True}
    assert time.monotonic() - t0 < 30  # 400 tokens would take far longer on this CPU
    assert sum(e["event"] == "token" for e in rest) < 100 and running_generations(server) == 0
    assert http.post(f"/api/steer/jobs/{start['job']}/cancel").status_code == 404


def test_closing_the_connection_cancels_and_busy_answers_503(http, server):
    with http.stream("POST", "/api/steer/stream", json=_steer_body(3, ["5x"], 200)) as r:
        next(r.iter_lines())
        with http.stream("POST", "/api/steer/stream", json=_steer_body(3, ["5x"], 200)) as r2:
            next(r2.iter_lines())
            third = http.post("/api/steer/stream", json=_steer_body(3, ["5x"], 5))
            assert third.status_code == 503 and "busy" in third.json()["detail"]
    deadline = time.monotonic() + 20
    while running_generations(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_generations(server) == 0


def test_search_is_served_while_a_generation_runs(http, server):
    with http.stream("POST", "/api/steer/stream", json=_steer_body(3, ["5x"], 200)) as r:
        lines = r.iter_lines()
        next(lines), next(lines)
        took = []
        for _ in range(3):
            t0 = time.monotonic()
            hits = http.post("/api/search/text", json={"text": "The bridge spans the strait."}).json()["hits"]
            took.append(time.monotonic() - t0)
            assert hits
        assert running_generations(server) == 1  # the generation was still going
    assert max(took) < 5, took


def test_stream_rejects_bad_requests(http):
    assert http.post("/api/steer/stream", json=_steer_body(999999, ["5x"], 5)).status_code == 404
    assert http.post("/api/steer/stream", json=_steer_body(3, ["lots"], 5)).status_code == 400
    assert http.post("/api/steer/stream", json=_steer_body(3, ["5x"] * 7, 5)).status_code == 422


def test_pages_answer_styled_errors_and_the_api_json(http):
    for path, status in (("/feature/abc", 400), ("/feature/1.5", 400), ("/nonexistent", 404),
                         ("/feature/256", 404)):
        r = http.get(path)
        assert r.status_code == status, path
        assert r.headers["content-type"].startswith("text/html"), path
    page = http.get("/feature/<b>x<b>").text
    assert "&lt;b&gt;x&lt;b&gt;" in page and "<b>x" not in page
    r = http.get("/api/nonexistent")
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert http.get("/api/features/abc").status_code == 422 and "detail" in http.get("/api/features/abc").json()


def test_fair_lock_serves_in_arrival_order():
    lock, order = FairLock(), []
    lock.acquire()
    threads = []
    for i in range(4):
        t = threading.Thread(target=lambda i=i: (lock.acquire(), order.append(i), lock.release()))
        t.start()
        threads.append(t)
        while lock.waiting() < i + 1:
            time.sleep(0.001)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3]


def test_thread_only_passes_other_threads_through():
    edit = ThreadOnly(lambda x: x + 1, passthrough=True)
    seen = []
    t = threading.Thread(target=lambda: seen.append(edit(10)))
    t.start()
    t.join()
    assert edit(10) == 11 and seen == [10]


def test_token_view_agrees_with_the_text_search(http):
    text = "The Golden Gate Bridge spans the strait near San Francisco."
    search = http.post("/api/search/text", json={"text": text, "n": 50, "by": "max"}).json()
    hit = search["hits"][0]
    peak = max(range(len(hit["acts"])), key=lambda i: hit["acts"][i])
    r = http.post("/api/search/token", json={"text": text, "position": peak, "n": 50, "by": "max"}).json()
    assert r["token"] == search["tokens"][peak]
    acts = {h["feature"]: h["act"] for h in r["hits"]}
    assert acts[hit["feature"]] == pytest.approx(hit["max"], rel=1e-3)
    assert [h["act"] for h in r["hits"]] == sorted(acts.values(), reverse=True)
    by_rel = http.post("/api/search/token", json={"text": text, "position": peak}).json()["hits"]
    assert [h["relative"] for h in by_rel] == sorted((h["relative"] for h in by_rel), reverse=True)
    assert http.post("/api/search/token", json={"text": text, "position": 0}).json()["hits"] == []  # <bos>
    assert http.post("/api/search/token", json={"text": text, "position": 999}).status_code == 400


def test_text_search_ranks_relative_to_the_corpus_max_by_default(http):
    text = "The Golden Gate Bridge spans the strait near San Francisco."
    hits = http.post("/api/search/text", json={"text": text, "n": 20}).json()["hits"]
    assert [h["relative"] for h in hits] == sorted((h["relative"] for h in hits), reverse=True)


def test_activations_agree_with_the_text_search(http):
    text = "The Golden Gate Bridge spans the strait near San Francisco."
    search = http.post("/api/search/text", json={"text": text, "n": 3, "by": "max"}).json()
    ids = [h["feature"] for h in search["hits"]]
    r = http.post("/api/activations", json={"text": text, "features": ids}).json()
    assert r["tokens"] == search["tokens"]
    for hit, got in zip(search["hits"], r["features"], strict=True):
        assert got["feature"] == hit["feature"] and got["acts"] == pytest.approx(hit["acts"], rel=1e-3, abs=1e-4)
        assert got["corpus_max"] == pytest.approx(hit["max"] / hit["relative"], rel=1e-3)
    assert http.post("/api/activations", json={"text": text, "features": [256]}).status_code == 404


def test_sampled_stream_goes_column_by_column_with_the_seed(http):
    body = {**_steer_body(3, ["5x"], 5), "temperature": 0.8, "seed": 7}
    texts = _texts(_events(http.post("/api/steer/stream", json=body).text.splitlines()), 2)
    one = http.post("/api/steer", json={"prompt": body["prompt"], "max_new_tokens": 5, "temperature": 0.8,
                                        "seed": 7, "features": [{"feature": 3, "value": "5x"}]}).json()
    assert texts == [one["baseline"], one["steered"]]
