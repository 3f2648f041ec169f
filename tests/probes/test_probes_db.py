"""The probes' tables: atomic updates of a feature database, reading them back, and the explorer's API routes."""

from __future__ import annotations

import json
import sqlite3

import pytest

from featurescope.errors import FeaturescopeError
from featurescope.featuredb import probes as probe_tables
from featurescope.featuredb.core import FORMAT, VERSION, FeatureStore, create_db

D_SAE = 6


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "features.db"
    with create_db(path) as w:
        w.meta({"format": FORMAT, "version": VERSION, "d_sae": D_SAE, "d_in": 4, "layer": 9, "model": "x"})
        w.insert("features", ("id", "count", "density", "max", "decoder_norm"),
                 [(i, 10, 0.01, 1.0 + i, 1.0) for i in range(D_SAE)])
        w.insert("labels", ("feature", "kind", "text", "score", "details"), [(2, "auto", "tower, Eiffel", 0.9, "{}")])
    return path


def _multilingual(con):
    langs = ["en", "zh"]
    scores = [(i, 0.1 * i, 0.5 if i else None, 0.1, int(i >= 3), int(i == 5), json.dumps({"en-zh": 0.1 * i}),
               json.dumps({"en": i, "zh": i}), 0.0 if i == 5 else None) for i in range(D_SAE)]
    segments = [(0, "en", "parallel", "eiffel-tower", "The Eiffel Tower", json.dumps(["The", " Eiffel", " Tower"])),
                (0, "zh", "parallel", "eiffel-tower", "埃菲尔铁塔", json.dumps(["埃", "菲", "尔", "铁塔"]))]
    examples = [(5, 0, "zh", 0, 2.0, probe_tables.floats_blob([0, 0, 1.0, 2.0])),
                (5, 0, "en", 0, 3.0, probe_tables.floats_blob([0, 3.0, 1.5]))]
    probe_tables.replace_multilingual(con, {"langs": langs, "null_max": 0.2}, scores, segments, examples)


def test_update_adds_tables_and_reads_back(db):
    with probe_tables.update_db(db) as con:
        _multilingual(con)
        probe_tables.replace_probe(con, "safety", {"categories": ["bias", "deception"]},
                          [("safety", "deception", 42, 42, 42, 42, 0.8, 0.75, 1, "1 feature generalise"),
                           ("safety", "bias", 42, 42, 42, 42, 0.7, 0.74, 0, "no feature generalises")],
                          [("safety", "deception", 0, 5, 0.8, 0.78, 0.001, 0.79, 1, '[[" lied", 9]]'),
                           ("safety", "deception", 1, 2, 0.75, 0.55, 0.4, 0.65, 0, "[]")])
    with FeatureStore.open(db) as store:  # still a valid feature database, with the old rows intact
        assert store.d_sae == D_SAE and store.labels(2)[0].text == "tower, Eiffel"
        f = probe_tables.multilingual_for_feature(store, 5)
        assert f.score == pytest.approx(0.5) and f.listed and f.langs == ["en", "zh"] and f.null_max == 0.2
        ex = f.examples[0]
        assert [e.lang for e in ex.langs] == ["en", "zh"]  # in the run's language order
        assert ex.langs[0].tokens == ["The", " Eiffel", " Tower"] and ex.langs[0].acts == [0, 3.0, 1.5]
        assert probe_tables.multilingual_for_feature(store, 0).transfer is None
        assert [m.feature for m in probe_tables.multilingual_top(store, 10)] == [5]
        assert [m.feature for m in probe_tables.multilingual_top(store, 2, listed_only=False)] == [5, 4]
        cats = probe_tables.probe_summaries(store)
        assert [c.category for c in cats] == ["bias", "deception"]  # the run's category order
        assert [r.feature for r in probe_tables.reported_features(store, "safety")] == [5]
        assert probe_tables.reported_features(store, "safety")[0].peak_tokens == [[" lied", 9]]
        assert f.same_token == 0.0 and probe_tables.multilingual_for_feature(store, 1).same_token is None
        top = probe_tables.multilingual_top(store, 5, listed_only=False, max_same_token=0.5)
        assert [m.feature for m in top] == [5]
        assert [r.category for r in probe_tables.probes_for_feature(store, 2)] == ["deception"]
        js = probe_tables.multilingual_json(store, 5)
        assert js["available"] and js["transfer"] == 0.5 and json.dumps(js)
        assert probe_tables.multilingual_json(store, 1)["examples"] == []


def test_reading_a_database_without_the_tables(db):
    assert probe_tables.multilingual_for_feature(db, 1) is None
    assert probe_tables.multilingual_json(db, 1) == {"available": False, "feature": 1}
    assert probe_tables.multilingual_top(db) == [] and probe_tables.probe_summaries(db) == []
    assert probe_tables.probes_for_feature(db, 0) == []


def test_a_failed_update_leaves_the_database_untouched(db, tmp_path):
    before = db.read_bytes()
    with pytest.raises(RuntimeError, match="boom"), probe_tables.update_db(db) as con:
        _multilingual(con)
        raise RuntimeError("boom")
    assert db.read_bytes() == before
    assert not list(tmp_path.glob(".features.db.*.tmp"))
    with probe_tables.update_db(db) as con:
        _multilingual(con)
    with probe_tables.update_db(db) as con:  # replacing: no duplicate rows
        _multilingual(con)
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM multilingual_scores").fetchone()[0] == D_SAE
    con.close()


def test_tables_of_an_older_layout_are_recreated(db):
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE multilingual_scores (feature INTEGER PRIMARY KEY, score REAL)")
    con.commit()
    con.close()
    with probe_tables.update_db(db) as con:
        _multilingual(con)
    assert probe_tables.multilingual_for_feature(db, 5).listed


def test_update_refuses_a_foreign_file(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 10)
    with pytest.raises(FeaturescopeError, match="not a featurescope feature database"), probe_tables.update_db(junk):
        pass


def test_explorer_routes(db):
    from fastapi.testclient import TestClient

    from featurescope.server.app import create_app

    with probe_tables.update_db(db) as con:
        _multilingual(con)
    app = create_app(db, allowed_hosts=None)
    client = TestClient(app)
    page = client.get("/api/features/5/multilingual").json()
    assert page["available"] and page["examples"][0]["langs"][1]["tokens"] == ["埃", "菲", "尔", "铁塔"]
    assert client.get("/api/multilingual?n=5").json()["features"][0]["feature"] == 5
    assert client.get("/api/probes").json() == []
    assert client.get("/api/features/1/probes").json() == []
    missing = client.get(f"/api/features/{D_SAE}/multilingual")
    assert missing.status_code == 404 and "out of range" in missing.json()["detail"]
    assert client.get("/api/features/-1/probes").status_code == 404
    app.state.explorer.close()
