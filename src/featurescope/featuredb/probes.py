"""The probes' tables inside a feature database: created, replaced and read here (schema:
docs/formats/features-db-probes.md).

`update_db(path)` copies the database (SQLite backup API) into a temporary file beside it, lets the caller add
or replace rows there, and renames the copy over the original only when the block succeeds: the database at
`path` is always either the old one or the complete new one. Writers of these tables take a lock file
(`DB.probes.lock`) so that two of them never overwrite each other's changes.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from featurescope.featuredb.core import FeatureStore, ensure_tables
from featurescope.featuredb.core import update_db as store_update_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS probes_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS multilingual_scores (
    feature INTEGER PRIMARY KEY, score REAL NOT NULL, transfer REAL, base_rate REAL NOT NULL,
    eligible INTEGER NOT NULL, listed INTEGER NOT NULL, pairs TEXT NOT NULL, fired TEXT NOT NULL, same_token REAL);
CREATE TABLE IF NOT EXISTS multilingual_segments (
    segment INTEGER NOT NULL, lang TEXT NOT NULL, source TEXT NOT NULL, ref TEXT NOT NULL, text TEXT NOT NULL,
    tokens TEXT NOT NULL, PRIMARY KEY (segment, lang)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS multilingual_examples (
    feature INTEGER NOT NULL, rank INTEGER NOT NULL, lang TEXT NOT NULL, segment INTEGER NOT NULL,
    value REAL NOT NULL, acts BLOB NOT NULL, PRIMARY KEY (feature, rank, lang)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probe_categories (
    probe_set TEXT NOT NULL, category TEXT NOT NULL, positives INTEGER NOT NULL, negatives INTEGER NOT NULL,
    train_items INTEGER NOT NULL, heldout_items INTEGER NOT NULL, best_train_auroc REAL NOT NULL,
    null_train_max REAL NOT NULL, reported INTEGER NOT NULL, verdict TEXT NOT NULL,
    PRIMARY KEY (probe_set, category)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probe_results (
    probe_set TEXT NOT NULL, category TEXT NOT NULL, rank INTEGER NOT NULL, feature INTEGER NOT NULL,
    train_auroc REAL NOT NULL, heldout_auroc REAL NOT NULL, p_value REAL NOT NULL, auroc REAL NOT NULL,
    reported INTEGER NOT NULL, peak_tokens TEXT NOT NULL, PRIMARY KEY (probe_set, category, rank)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS probe_suppression (
    probe_set TEXT NOT NULL, category TEXT NOT NULL, feature INTEGER NOT NULL, value TEXT NOT NULL,
    mode TEXT NOT NULL, clamp REAL NOT NULL, pairs INTEGER NOT NULL, clean_pos REAL NOT NULL,
    steered_pos REAL NOT NULL, clean_neg REAL NOT NULL, steered_neg REAL NOT NULL, selectivity REAL NOT NULL,
    ci_low REAL NOT NULL, ci_high REAL NOT NULL, target INTEGER NOT NULL,
    PRIMARY KEY (probe_set, category, feature, value, mode, target)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS multilingual_scores_rank ON multilingual_scores (listed, score);
CREATE INDEX IF NOT EXISTS probe_results_feature ON probe_results (feature);
"""
TABLES = ("probes_meta", "multilingual_scores", "multilingual_segments", "multilingual_examples",
          "probe_categories", "probe_results", "probe_suppression")


# -- writing ---------------------------------------------------------------------------------------
def ensure_schema(con: sqlite3.Connection) -> None:
    """Create the probes' tables; a table of an older layout (other columns) is dropped and recreated."""
    ensure_tables(con, SCHEMA, TABLES)


@contextmanager
def update_db(path: str | Path) -> Iterator[sqlite3.Connection]:
    """`featurescope.featuredb.core.update_db` (an atomic update of a copy, under the shared update lock) with the
    probes' tables created."""
    with store_update_db(path) as con:
        ensure_schema(con)
        yield con


def _insert(con: sqlite3.Connection, table: str, rows: Iterable[Sequence[Any]]) -> int:
    rows = [tuple(r) for r in rows]
    if rows:
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    return len(rows)


def set_meta(con: sqlite3.Connection, key: str, value: Any) -> None:
    """Store `value` as JSON under `key` in probes_meta."""
    con.execute("INSERT OR REPLACE INTO probes_meta VALUES (?, ?)", (key, json.dumps(value)))


def floats_blob(values: Sequence[float]) -> bytes:
    """Little-endian float32 bytes (the features database's convention for activations)."""
    return np.asarray(values, dtype="<f4").tobytes()


def replace_multilingual(con: sqlite3.Connection, meta: dict[str, Any], scores: Iterable[Sequence[Any]],
                         segments: Iterable[Sequence[Any]], examples: Iterable[Sequence[Any]]) -> None:
    """Replace all multilingual rows (rows in the column order of the schema)."""
    for table in ("multilingual_scores", "multilingual_segments", "multilingual_examples"):
        con.execute(f"DELETE FROM {table}")
    _insert(con, "multilingual_scores", scores)
    _insert(con, "multilingual_segments", segments)
    _insert(con, "multilingual_examples", examples)
    set_meta(con, "multilingual", meta)


def replace_probe(con: sqlite3.Connection, probe_set: str, meta: dict[str, Any],
                  categories: Iterable[Sequence[Any]], results: Iterable[Sequence[Any]]) -> None:
    """Replace one probe set's rows (categories and ranked features)."""
    con.execute("DELETE FROM probe_categories WHERE probe_set = ?", (probe_set,))
    con.execute("DELETE FROM probe_results WHERE probe_set = ?", (probe_set,))
    _insert(con, "probe_categories", categories)
    _insert(con, "probe_results", results)
    set_meta(con, f"probe:{probe_set}", meta)


def upsert_suppression(con: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> None:
    """Add or replace suppression measurements."""
    for row in rows:
        con.execute(f"INSERT OR REPLACE INTO probe_suppression VALUES ({', '.join('?' * len(row))})", tuple(row))


# -- reading ---------------------------------------------------------------------------------------
class LangExample(NamedTuple):
    """One language's version of an aligned segment, with the feature's activation on every token."""

    lang: str
    text: str
    tokens: list[str]
    acts: list[float]
    value: float
    """The max of `acts`."""


class AlignedExample(NamedTuple):
    """A segment on which the feature fires, shown in every language (rank 0 = highest mean activation)."""

    rank: int
    segment: int
    source: str
    ref: str
    langs: list[LangExample]


class MultilingualFeature(NamedTuple):
    """A feature's cross-lingual scores and its aligned examples (definitions: docs/probes.md)."""

    feature: int
    score: float
    transfer: float | None
    base_rate: float
    eligible: bool
    listed: bool
    pairs: dict[str, float]
    fired: dict[str, int]
    same_token: float | None
    """Fraction of language pairs whose peak token (in its aligned examples) is the same string."""
    langs: list[str]
    null_max: float | None
    examples: list[AlignedExample]


class ProbeRow(NamedTuple):
    """A candidate feature of a category: AUROCs on the discovery half, the held-out half and all texts."""

    probe_set: str
    category: str
    rank: int
    feature: int
    train_auroc: float
    heldout_auroc: float
    p_value: float
    """Permutation p-value of the held-out AUROC, before the correction for the number of candidates."""
    auroc: float
    reported: bool
    peak_tokens: list[list[Any]]
    """The tokens on which it peaks in the category's positives, with counts: [[token, n], ...]."""


class CategorySummary(NamedTuple):
    """One category of a probe run, its chance levels and verdict, and its candidates."""

    probe_set: str
    category: str
    positives: int
    negatives: int
    train_items: int
    heldout_items: int
    best_train_auroc: float
    null_train_max: float
    reported: int
    verdict: str
    candidates: list[ProbeRow]


@contextmanager
def _connect(db: FeatureStore | sqlite3.Connection | str | Path) -> Iterator[sqlite3.Connection]:
    if isinstance(db, sqlite3.Connection):
        yield db
    elif isinstance(db, FeatureStore):
        yield db.con
    else:
        with FeatureStore.open(db) as store:
            yield store.con


def has_table(con: sqlite3.Connection, name: str) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def get_meta(con: sqlite3.Connection, key: str) -> Any:
    """A probes_meta value (None if absent)."""
    if not has_table(con, "probes_meta"):
        return None
    row = con.execute("SELECT value FROM probes_meta WHERE key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else None


def _examples(con: sqlite3.Connection, i: int, langs: list[str]) -> list[AlignedExample]:
    rows = con.execute("SELECT e.rank, e.lang, e.segment, e.value, e.acts, s.source, s.ref, s.text, s.tokens "
                       "FROM multilingual_examples e JOIN multilingual_segments s ON s.segment = e.segment AND "
                       "s.lang = e.lang WHERE e.feature = ? ORDER BY e.rank", (i,)).fetchall()
    order = {lang: n for n, lang in enumerate(langs)}
    by_rank: dict[int, AlignedExample] = {}
    for rank, lang, seg, value, blob, source, ref, text, tokens in rows:
        ex = by_rank.setdefault(rank, AlignedExample(rank, seg, source, ref, []))
        ex.langs.append(LangExample(lang, text, json.loads(tokens), np.frombuffer(blob, "<f4").tolist(), value))
    for ex in by_rank.values():
        ex.langs.sort(key=lambda e: order.get(e.lang, len(order)))
    return [by_rank[r] for r in sorted(by_rank)]


def multilingual_for_feature(db: FeatureStore | sqlite3.Connection | str | Path, i: int
                             ) -> MultilingualFeature | None:
    """Feature `i`'s cross-lingual scores and aligned examples; None when `featurescope multilingual` has not
    been run on this database."""
    with _connect(db) as con:
        if not has_table(con, "multilingual_scores"):
            return None
        row = con.execute("SELECT score, transfer, base_rate, eligible, listed, pairs, fired, same_token "
                          "FROM multilingual_scores WHERE feature = ?", (int(i),)).fetchone()
        if row is None:
            return None
        meta = get_meta(con, "multilingual") or {}
        langs = list(meta.get("langs", []))
        score, transfer, base, eligible, listed, pairs, fired, same = row
        return MultilingualFeature(int(i), score, transfer, base, bool(eligible), bool(listed), json.loads(pairs),
                                   json.loads(fired), same, langs, meta.get("null_max"), _examples(con, int(i), langs))


def multilingual_top(db: FeatureStore | sqlite3.Connection | str | Path, n: int = 20, *,
                     listed_only: bool = True, max_same_token: float | None = None) -> list[MultilingualFeature]:
    """The `n` highest-scoring features (only those listed as cross-lingual unless `listed_only=False`; only those
    whose same-token fraction is below `max_same_token` if given)."""
    with _connect(db) as con:
        if not has_table(con, "multilingual_scores"):
            return []
        where, args = ["listed = 1"] if listed_only else [], []
        if max_same_token is not None:
            where.append("same_token < ?")
            args.append(max_same_token)
        sql = f"WHERE {' AND '.join(where)}" if where else ""
        ids = [r[0] for r in con.execute(f"SELECT feature FROM multilingual_scores {sql} "
                                         "ORDER BY score DESC, feature LIMIT ?", (*args, n))]
        return [f for f in (multilingual_for_feature(con, i) for i in ids) if f is not None]


def probe_summaries(db: FeatureStore | sqlite3.Connection | str | Path, probe_set: str | None = None
                    ) -> list[CategorySummary]:
    """Every category of every stored probe run (or of `probe_set`), with its candidates in rank order."""
    with _connect(db) as con:
        if not has_table(con, "probe_categories"):
            return []
        where, args = ("WHERE probe_set = ?", (probe_set,)) if probe_set else ("", ())
        cats = con.execute(f"SELECT * FROM probe_categories {where}", args).fetchall()
        rows = con.execute(f"SELECT * FROM probe_results {where} ORDER BY probe_set, category, rank", args).fetchall()
        cands: dict[tuple[str, str], list[ProbeRow]] = {}
        for r in rows:
            cands.setdefault((r[0], r[1]), []).append(_probe_row(r))
        meta_order = {c[0]: (get_meta(con, f"probe:{c[0]}") or {}).get("categories", []) for c in cats}
        out = [CategorySummary._make([*c[:10], cands.get((c[0], c[1]), [])]) for c in cats]
        return sorted(out, key=lambda s: (s.probe_set, _index(meta_order.get(s.probe_set, []), s.category)))


def _probe_row(r: Sequence[Any]) -> ProbeRow:
    return ProbeRow._make([*r[:8], bool(r[8]), json.loads(r[9])])


def _index(order: list[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


def probes_for_feature(db: FeatureStore | sqlite3.Connection | str | Path, i: int) -> list[ProbeRow]:
    """Every probe category in which feature `i` was a candidate (reported or not)."""
    with _connect(db) as con:
        if not has_table(con, "probe_results"):
            return []
        rows = con.execute("SELECT * FROM probe_results WHERE feature = ? ORDER BY reported DESC, heldout_auroc DESC",
                           (int(i),)).fetchall()
        return [_probe_row(r) for r in rows]


def reported_features(db: FeatureStore | sqlite3.Connection | str | Path, probe_set: str,
                      category: str | None = None) -> list[ProbeRow]:
    """The features reported (validated on held-out texts) for a probe set, optionally one category."""
    return [r for s in probe_summaries(db, probe_set) if category in (None, s.category)
            for r in s.candidates if r.reported]


# -- JSON ------------------------------------------------------------------------------------------
def to_json(obj: Any) -> Any:
    """NamedTuples as dicts, recursively; paths as strings; NaN and infinities as None (JSON has neither)."""
    if hasattr(obj, "_asdict"):
        return {k: to_json(v) for k, v in obj._asdict().items()}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def multilingual_json(db: FeatureStore | sqlite3.Connection | str | Path, i: int) -> dict[str, Any]:
    """What the explorer's feature page shows: `{"available": false}` or the scores and aligned examples."""
    f = multilingual_for_feature(db, i)
    return {"available": False, "feature": int(i)} if f is None else {"available": True, **to_json(f)}

