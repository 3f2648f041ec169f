"""The explorer's JSON API on a real small feature database (TestClient, and a live server for raw requests),
with the embedded model loaded for live search and steering; `featurescope serve` as a command."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from conftest import run_cli
from explorer_helpers import build_db, start_server
from featurescope.featuredb.core import FeatureStore
from featurescope.sae import SAE
from featurescope.server import create_app, limits

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def explorer_db(gemma, tmp_path_factory):
    return build_db(gemma, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def client(explorer_db, gemma):
    app = create_app(explorer_db.db, sae=SAE.load(explorer_db.sae_dir), model=gemma)
    with TestClient(app, base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def offline(explorer_db):
    """An explorer without a model: the database only."""
    with TestClient(create_app(explorer_db.db), base_url=BASE) as c:
        yield c


def test_info_overview_and_listings(client, explorer_db):
    info = client.get("/api/info").json()
    assert info["d_sae"] == 256 and info["layer"] == 9 and info["live"] is True
    assert info["limits"]["max_new_tokens"] == limits.MAX_NEW_TOKENS
    o = client.get("/api/overview").json()
    assert 0 < o["quality"]["fvu"] < 1 and o["quality"]["l0"] > 0 and 0 <= o["quality"]["dead_fraction"] < 1
    h = o["density"]
    assert sum(h["counts"]) + h["never_fired"] == 256 and len(h["edges"]) == len(h["counts"]) + 1
    rows = client.get("/api/features", params={"by": "density", "n": 5}).json()
    assert len(rows) == 5 and rows[0]["density"] >= rows[-1]["density"]
    assert [r["id"] for r in client.get("/api/features", params={"by": "id", "n": 3, "ascending": True}).json()] \
        == [0, 1, 2]


def test_overview_names_what_each_eval_figure_counts(explorer_db, tmp_path):
    from featurescope.atomic import write_json

    what = {"loss_recovered": "CE loss recovered over 8128 predicted tokens of 64 held-out contexts of the store",
            "ood_loss_recovered": "CE loss recovered over 4064 predicted tokens of probe-texts (out-of-domain text)"}
    write_json(tmp_path / "eval.json", {"loss_recovered": 0.95, "ood_loss_recovered": 0.89, "ce_clean": 3.6,
                                        "split": "heldout", "measured_on": what})
    with TestClient(create_app(explorer_db.db, eval_path=tmp_path / "eval.json"), base_url=BASE) as c:
        o = c.get("/api/overview").json()
    assert o["quality"]["loss_recovered"] == 0.95 and o["quality"]["ood_loss_recovered"] == 0.89
    assert o["ce_source"] == f"featurescope eval, {what['loss_recovered']}"
    assert o["ood_source"] == what["ood_loss_recovered"]


def test_feature_detail_matches_the_store(client, explorer_db):
    f = explorer_db.payload_feature
    detail = client.get(f"/api/features/{f}").json()
    with FeatureStore.open(explorer_db.db) as store:
        ref = store.feature(f)
    assert detail["id"] == f and detail["stats"]["count"] == ref.stats.count
    assert detail["stats"]["max"] == pytest.approx(ref.stats.max)
    assert [e["value"] for e in detail["top"]] == pytest.approx([e.value for e in ref.top])
    assert detail["top"][0]["tokens"] == ref.top[0].tokens and len(detail["top"][0]["acts"]) == len(ref.top[0].tokens)
    assert [n["feature"] for n in detail["neighbours"]] == [n.feature for n in ref.neighbours]
    assert detail["histogram"]["counts"] == ref.histogram.counts
    assert detail["label"] == ref.label.text and len(detail["positive_logits"]) == len(ref.positive_logits)
    summary = client.get(f"/api/features/{f}/summary").json()
    assert summary["label"] == detail["label"] and summary["max"] == pytest.approx(ref.stats.max)
    nb = client.get(f"/api/features/{f}/neighbours", params={"n": 3}).json()
    assert [n["feature"] for n in nb] == [n.feature for n in ref.neighbours[:3]]


def test_map_and_label_search(client, explorer_db):
    m = client.get("/api/map").json()
    assert m["method"] == "pca" and len(m["ids"]) == len(m["x"]) == len(m["labels"]) == 256
    hits = client.get("/api/search/labels", params={"q": "onerror"}).json()
    assert explorer_db.payload_feature in [h["id"] for h in hits]


@pytest.mark.parametrize("path", [
    "/api/features/256", "/api/features/-1", "/api/features/99999999999999999999999999",
    "/api/features/256/summary", "/api/features/1000/neighbours", "/feature/256",
])
def test_out_of_range_feature_ids_are_404(client, path):
    r = client.get(path)
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("path", [
    "/api/features/abc", "/api/features?n=0", f"/api/features?n={limits.MAX_LIST + 1}", "/api/features?by=evil",
    "/api/features?n=99999999999999999999999", "/api/features/3/neighbours?n=1000", "/api/search/labels?q=",
    "/api/search/labels?q=" + "x" * (limits.MAX_QUERY_CHARS + 1),
])
def test_bad_query_parameters_are_422(client, path):
    assert client.get(path).status_code == 422


def test_live_text_search(client, explorer_db):
    r = client.post("/api/search/text", json={"text": "Markup sample: <script>alert(1)</script>", "n": 5})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["tokens"][0] == "<bos>" and "".join(data["tokens"][1:]).startswith("Markup sample")
    assert 0 < len(data["hits"]) <= 5
    assert all(len(h["acts"]) == len(data["tokens"]) and h["max"] > 0 for h in data["hits"])


def test_live_steering_side_by_side(client, explorer_db):
    f = explorer_db.payload_feature
    r = client.post("/api/steer", json={"prompt": "The bridge is", "features": [{"feature": f, "value": "5x"}],
                                        "max_new_tokens": 4})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["prompt"] == "The bridge is" and data["baseline"] and data["steered"]
    with FeatureStore.open(explorer_db.db) as store:
        assert data["values"][str(f)] == pytest.approx(5 * store.feature(f).stats.max, rel=1e-5)


def test_live_ce_loss_recovered_shows_in_the_overview(client):
    r = client.post("/api/quality/ce", json={"contexts": 1})
    assert r.status_code == 200, r.text
    ce = r.json()
    assert ce["tokens"] == 127 and ce["ce_zero"] > ce["ce_clean"]
    o = client.get("/api/overview").json()
    assert o["quality"]["loss_recovered"] == pytest.approx(ce["loss_recovered"]) and "measured" in o["ce_source"]


@pytest.mark.parametrize("body, status", [
    ({"text": "x" * (limits.MAX_TEXT_CHARS + 1)}, 422),
    ({"text": ""}, 422),
    ({"text": "hello", "n": limits.MAX_HITS + 1}, 422),
])
def test_oversized_text_search_is_rejected(client, body, status):
    assert client.post("/api/search/text", json=body).status_code == status


def _steer(**kw):
    return {"prompt": "Hello", "features": [{"feature": 1, "value": "5x"}], "max_new_tokens": 2, **kw}


@pytest.mark.parametrize("body, status", [
    (_steer(max_new_tokens=limits.MAX_NEW_TOKENS + 1), 422),
    (_steer(prompt="x" * (limits.MAX_TEXT_CHARS + 1)), 422),
    (_steer(features=[{"feature": i} for i in range(limits.MAX_STEER_FEATURES + 1)]), 422),
    (_steer(features=[]), 422),
    (_steer(features=[{"feature": 256}]), 404),
    (_steer(features=[{"feature": 1}, {"feature": 1}]), 400),
    (_steer(features=[{"feature": 1, "value": "abc"}]), 400),
    (_steer(features=[{"feature": 1, "value": "1e9x"}]), 400),
    (_steer(features=[{"feature": 1, "value": "x" * 40}]), 422),
    (_steer(mode="evil"), 422),
    (_steer(temperature=-1), 422),
])
def test_bad_steering_requests_are_4xx(client, body, status):
    r = client.post("/api/steer", json=body)
    assert r.status_code == status, r.text


def test_body_size_host_and_content_type_guards(client):
    big = b'{"text": "' + b"x" * (limits.MAX_BODY_BYTES + 10) + b'"}'
    assert client.post("/api/search/text", content=big, headers={"content-type": "application/json"}
                       ).status_code == 413
    chunks = (b"x" * 1024 for _ in range(limits.MAX_BODY_BYTES // 1024 + 2))  # no Content-Length
    assert client.post("/api/search/text", content=chunks, headers={"content-type": "application/json"}
                       ).status_code == 413
    assert client.get("/api/info", headers={"host": "evil.example:8765"}).status_code == 400
    assert client.get("/api/info", headers={"host": "localhost:8765"}).status_code == 200
    assert client.get("/api/info", headers={"host": "[::1]:8765"}).status_code == 200
    # a cross-site form can only send text/plain: it is not parsed as JSON
    assert client.post("/api/search/text", content=b'{"text": "hi"}', headers={"content-type": "text/plain"}
                       ).status_code == 422
    headers = client.get("/overview").headers
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"


def test_live_routes_without_a_model_are_409(offline):
    assert offline.get("/api/info").json()["live"] is False
    assert offline.post("/api/search/text", json={"text": "hi"}).status_code == 409
    assert offline.post("/api/steer", json=_steer()).status_code == 409
    assert offline.post("/api/quality/ce", json={}).status_code == 409


def test_openapi_documents_every_endpoint(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/info", "/api/overview", "/api/features", "/api/features/{feature_id}", "/api/map",
              "/api/features/{feature_id}/neighbours", "/api/search/labels", "/api/search/text", "/api/steer",
              "/api/quality/ce"):
        assert p in paths, p
    assert client.get("/docs").status_code == 200


def _raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET `target` exactly as written (no client-side normalisation of `..`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_static_paths_never_leave_the_static_folder(explorer_db):
    server = start_server(explorer_db.db)
    try:
        assert _raw_get(server.port, "/static/js/common.js")[0] == 200
        for target in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/js/../../run.py",
                       "/static/%2e%2e/%2e%2e/errors.py", "/static//etc/passwd", "/static/..\\app.py"):
            status, body = _raw_get(server.port, target)
            assert status in (400, 404), (target, status)
            assert b"import" not in body and b"root:" not in body
    finally:
        server.stop()


def test_serve_command_prints_the_url_and_serves(explorer_db, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "featurescope", "serve", str(explorer_db.db), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url = time.monotonic() + 120, None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            url = match.group(1) if match else None
        assert url, "no URL printed"
        import urllib.request

        with urllib.request.urlopen(url + "api/info", timeout=10) as reply:
            assert reply.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_serve_command_reports_a_missing_database():
    r = run_cli("serve", "no/such.db", "--port", "0")
    assert r.returncode == 2 and "no such feature database" in r.stderr
