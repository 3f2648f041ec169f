"""The image tables of a feature database: top images with per-patch activations, top text-only contexts, the
modality score, and the paired image/caption probe (schema: docs/formats/features-db-images.md).

They are added to a database that `analyze` wrote, through `featurescope.featuredb.core.update_db` (a copy renamed into
place only when complete), so the tables of `analyze` are never changed and a text-only database reads as before.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore

ANALYSIS_SCHEMA = """
CREATE TABLE images_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY, ref TEXT NOT NULL, text TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    grid_rows INTEGER NOT NULL, grid_cols INTEGER NOT NULL, canvas TEXT NOT NULL, resized INTEGER NOT NULL,
    thumbnail BLOB NOT NULL);
CREATE TABLE modality (
    feature INTEGER PRIMARY KEY, image_sum REAL NOT NULL, text_sum REAL NOT NULL, image_count INTEGER NOT NULL,
    text_count INTEGER NOT NULL, score REAL, balanced REAL);
CREATE TABLE image_examples (
    feature INTEGER NOT NULL, rank INTEGER NOT NULL, image INTEGER NOT NULL, value REAL NOT NULL,
    row INTEGER NOT NULL, col INTEGER NOT NULL, acts BLOB NOT NULL, PRIMARY KEY (feature, rank)) WITHOUT ROWID;
CREATE TABLE text_examples (
    feature INTEGER NOT NULL, rank INTEGER NOT NULL, value REAL NOT NULL, context INTEGER NOT NULL,
    position INTEGER NOT NULL, start INTEGER NOT NULL, tokens TEXT NOT NULL, acts BLOB NOT NULL,
    PRIMARY KEY (feature, rank)) WITHOUT ROWID;
CREATE INDEX modality_score ON modality (score);
"""
ANALYSIS_TABLES = ("images_meta", "images", "modality", "image_examples", "text_examples")
PROBE_SCHEMA = """
CREATE TABLE image_probe_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE image_probe_pairs (
    pair INTEGER PRIMARY KEY, ref TEXT NOT NULL, text TEXT NOT NULL, thumbnail BLOB NOT NULL);
CREATE TABLE image_probe_scores (
    feature INTEGER PRIMARY KEY, consistency REAL NOT NULL, jaccard REAL, image_pairs INTEGER NOT NULL,
    text_pairs INTEGER NOT NULL, both_pairs INTEGER NOT NULL);
CREATE TABLE image_probe_acts (
    feature INTEGER NOT NULL, pair INTEGER NOT NULL, image_value REAL NOT NULL, text_value REAL NOT NULL,
    PRIMARY KEY (feature, pair)) WITHOUT ROWID;
CREATE INDEX image_probe_rank ON image_probe_scores (consistency);
"""
PROBE_TABLES = ("image_probe_meta", "image_probe_pairs", "image_probe_scores", "image_probe_acts")


class Modality(NamedTuple):
    """How much of a feature's firing is on image positions."""

    image_sum: float
    text_sum: float
    image_count: int
    text_count: int
    score: float | None
    """image_sum / (image_sum + text_sum): the share of its activation mass on image positions (None: never fires)."""
    balanced: float | None
    """The same with each sum divided by the number of image (text) positions analysed: 0.5 = no preference."""


class ImageExample(NamedTuple):
    """One of a feature's top images: its activation on every patch of the image's grid (view 0)."""

    rank: int
    image: int
    value: float
    """The highest activation on any of the image's patches (all views)."""
    row: int
    col: int
    """The patch of view 0 with the highest activation."""
    grid: tuple[int, int]
    acts: list[float]
    """rows × cols activations, row-major."""
    ref: str
    text: str


class TextExample(NamedTuple):
    """One of a feature's top contexts by its peak over text positions only (image positions show 0)."""

    rank: int
    value: float
    context: int
    position: int
    start: int
    tokens: list[str]
    acts: list[float]


class FeatureImages(NamedTuple):
    """The image side of one feature."""

    feature: int
    modality: Modality | None
    images: list[ImageExample]
    texts: list[TextExample]


class ProbeScore(NamedTuple):
    """How consistently a feature fires on both members of paired images and captions."""

    feature: int
    consistency: float
    """Pearson r across pairs of its max activation on the image and on the caption (0 if either is constant)."""
    jaccard: float | None
    """Pairs where it fires on both / pairs where it fires on either (None: neither)."""
    image_pairs: int
    text_pairs: int
    both_pairs: int
    label: str


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def replace_tables(con: sqlite3.Connection, schema: str, tables: Sequence[str]) -> None:
    """Drop `tables` (if present) and create them from `schema`."""
    existing = _tables(con)
    for t in tables:
        if t in existing:
            con.execute(f"DROP TABLE {t}")
    con.executescript(schema)


def insert(con: sqlite3.Connection, table: str, rows: Iterable[Sequence[Any]]) -> int:
    """Insert rows into one of the image tables."""
    if table not in ANALYSIS_TABLES + PROBE_TABLES:
        raise ValueError(f"unknown table {table}")
    rows = [tuple(r) for r in rows]
    if rows:
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    return len(rows)


def has_images(store: FeatureStore) -> bool:
    """True if the database holds the image analysis."""
    return "images_meta" in _tables(store.con)


def has_probe(store: FeatureStore) -> bool:
    """True if the database holds a paired image/caption probe."""
    return "image_probe_scores" in _tables(store.con)


def images_meta(store: FeatureStore) -> dict[str, Any]:
    """The image analysis' settings and totals (empty without one)."""
    if not has_images(store):
        return {}
    return {k: json.loads(v) for k, v in store.con.execute("SELECT key, value FROM images_meta")}


def _floats(blob: bytes, dtype: str = "<f4") -> list[float]:
    return np.frombuffer(blob, dtype=dtype).astype(np.float64).tolist()


def modality(store: FeatureStore, i: int) -> Modality | None:
    """Feature `i`'s modality score (None without an image analysis)."""
    i = store.check_id(i)
    if not has_images(store):
        return None
    row = store.con.execute("SELECT image_sum, text_sum, image_count, text_count, score, balanced FROM modality "
                            "WHERE feature = ?", (i,)).fetchone()
    return Modality(*row) if row else None


def feature_images(store: FeatureStore, i: int) -> FeatureImages:
    """Top images (with per-patch activations), top text contexts and modality of feature `i`."""
    i = store.check_id(i)
    if not has_images(store):
        return FeatureImages(i, None, [], [])
    rows = store.con.execute(
        "SELECT e.rank, e.image, e.value, e.row, e.col, i.grid_rows, i.grid_cols, e.acts, i.ref, i.text "
        "FROM image_examples e JOIN images i ON i.id = e.image WHERE e.feature = ? ORDER BY e.rank", (i,)).fetchall()
    images = [ImageExample(r, img, v, row, col, (gr, gc), _floats(a, "<f2"), ref, text)
              for r, img, v, row, col, gr, gc, a, ref, text in rows]
    rows = store.con.execute("SELECT rank, value, context, position, start, tokens, acts FROM text_examples "
                             "WHERE feature = ? ORDER BY rank", (i,)).fetchall()
    texts = [TextExample(r, v, c, p, s, json.loads(t), _floats(a)) for r, v, c, p, s, t, a in rows]
    return FeatureImages(i, modality(store, i), images, texts)


def thumbnail(store: FeatureStore, image: int) -> bytes:
    """The JPEG thumbnail of stored image `image` (from the analysis, or a probe pair as -1 − pair)."""
    row = None
    if image >= 0 and has_images(store):
        row = store.con.execute("SELECT thumbnail FROM images WHERE id = ?", (image,)).fetchone()
    elif image < 0 and has_probe(store):
        row = store.con.execute("SELECT thumbnail FROM image_probe_pairs WHERE pair = ?", (-1 - image,)).fetchone()
    if row is None:
        raise FeaturescopeError(f"image {image} is not in {store.path.name}")
    return bytes(row[0])


def probe_scores(store: FeatureStore, n: int = 20) -> list[ProbeScore]:
    """The `n` features with the highest image/caption consistency."""
    if not has_probe(store):
        raise FeaturescopeError(f"{store.path.name} holds no image/caption probe: run `featurescope image-probe` first")
    rows = store.con.execute("SELECT feature, consistency, jaccard, image_pairs, text_pairs, both_pairs FROM "
                             "image_probe_scores ORDER BY consistency DESC, feature LIMIT ?", (n,)).fetchall()
    labels = {f: (lb.text if (lb := store.feature(f).label) else "") for f, *_ in rows}
    return [ProbeScore._make([*r, labels[r[0]]]) for r in rows]
