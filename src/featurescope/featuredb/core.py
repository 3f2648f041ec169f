"""The feature database: one SQLite file holding everything `analyze` found about every feature.

It is the single source the CLI and the web explorer read; its schema is in docs/formats/features-db.md.
`create_db(path)` writes a new database into a temporary file beside `path` in batched transactions and
renames it into place only once complete, so a database is never half-written. `FeatureStore.open(path)`
opens one read-only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from featurescope.atomic import atomic_path
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.check import check_database
from featurescope.featuredb.records import (
    Example,
    Feature,
    FeatureStats,
    FeatureSummary,
    Histogram,
    Label,
    Neighbour,
    TokenEffect,
    label_rank,
)
from featurescope.tokentext import Merger, readable, text_has_words

FORMAT = "featurescope.features"
VERSION = 2
"""2: `tokens.bytes` (each token's raw bytes) and `labels.score_lower`; version 1 databases read as before."""
DECODER_CHUNK = 4096
"""Decoder rows per blob of the `decoder` table."""
BATCH_ROWS = 20_000
"""Rows per transaction when writing."""

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features (
    id INTEGER PRIMARY KEY, count INTEGER NOT NULL, density REAL NOT NULL, mean REAL, std REAL,
    max REAL NOT NULL, max_context INTEGER, max_position INTEGER, decoder_norm REAL NOT NULL);
CREATE TABLE histograms (feature INTEGER PRIMARY KEY, max REAL NOT NULL, counts TEXT NOT NULL);
CREATE TABLE contexts (id INTEGER PRIMARY KEY, tokens BLOB NOT NULL);
CREATE TABLE tokens (id INTEGER PRIMARY KEY, text TEXT NOT NULL, bytes BLOB);
CREATE TABLE examples (
    feature INTEGER NOT NULL, kind TEXT NOT NULL, interval INTEGER NOT NULL, rank INTEGER NOT NULL,
    value REAL NOT NULL, context INTEGER NOT NULL, position INTEGER NOT NULL, start INTEGER NOT NULL,
    acts BLOB NOT NULL, PRIMARY KEY (feature, kind, interval, rank)) WITHOUT ROWID;
CREATE TABLE logit_effects (
    feature INTEGER NOT NULL, sign INTEGER NOT NULL, rank INTEGER NOT NULL, token INTEGER NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (feature, sign, rank)) WITHOUT ROWID;
CREATE TABLE neighbours (
    feature INTEGER NOT NULL, rank INTEGER NOT NULL, other INTEGER NOT NULL, cosine REAL NOT NULL,
    PRIMARY KEY (feature, rank)) WITHOUT ROWID;
CREATE TABLE map (feature INTEGER PRIMARY KEY, x REAL NOT NULL, y REAL NOT NULL);
CREATE TABLE labels (
    feature INTEGER NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL, score REAL, details TEXT NOT NULL,
    score_lower REAL, PRIMARY KEY (feature, kind)) WITHOUT ROWID;
CREATE TABLE decoder (start INTEGER PRIMARY KEY, rows INTEGER NOT NULL, data BLOB NOT NULL);
"""
INDEXES = """
CREATE INDEX features_density ON features (density);
CREATE INDEX features_max ON features (max);
CREATE INDEX labels_score ON labels (kind, score);
"""
TABLES = ("meta", "features", "histograms", "contexts", "tokens", "examples", "logit_effects", "neighbours",
          "map", "labels", "decoder")
REQUIRED_TABLES = ("meta", "features", "histograms", "contexts", "tokens", "examples", "logit_effects",
                   "neighbours", "map", "labels", "decoder")
"""Tables every version-1 database holds (the damage check requires them; tables added later are optional)."""
TOP_BY = ("density", "max", "label-score", "mean", "id")


# -- writing ---------------------------------------------------------------------------------------
class DBWriter:
    """Inserts rows into a new feature database (used inside `create_db`)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def meta(self, values: dict[str, Any]) -> None:
        """Store each value as JSON under its key."""
        self.insert("meta", ("key", "value"), ((k, json.dumps(v)) for k, v in values.items()))

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Insert `rows` in transactions of BATCH_ROWS; returns the row count."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table}")
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        total, batch = 0, []
        for row in rows:
            batch.append(tuple(row))
            if len(batch) >= BATCH_ROWS:
                total += self._flush(sql, batch)
                batch = []
        return total + self._flush(sql, batch)

    def _flush(self, sql: str, batch: list[tuple[Any, ...]]) -> int:
        if batch:
            with self.con:
                self.con.executemany(sql, batch)
        return len(batch)

    def decoder(self, unit_rows: Tensor) -> None:
        """Store unit decoder directions [d_sae, d_in] as float16 blobs of DECODER_CHUNK rows."""
        arr = unit_rows.detach().float().cpu().numpy().astype("<f2")
        self.insert("decoder", ("start", "rows", "data"),
                    ((s, len(arr[s:s + DECODER_CHUNK]), arr[s:s + DECODER_CHUNK].tobytes())
                     for s in range(0, len(arr), DECODER_CHUNK)))


@contextmanager
def create_db(path: str | Path) -> Iterator[DBWriter]:
    """Yield a writer into a fresh database that replaces `path` (atomically) when the block succeeds."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode=OFF")  # the file is renamed into place only when complete
            con.execute("PRAGMA synchronous=OFF")
            con.executescript(SCHEMA)
            yield DBWriter(con)
            con.executescript(INDEXES)
            con.commit()
        finally:
            con.close()


UPDATE_LOCK_SUFFIX = ".probes.lock"
"""Writers that update an existing database take turns through `DB` + this lock file (POSIX flock); the name is
the one `featurescope.featuredb.probes` uses, so explanations and probe results never overwrite each other."""


@contextmanager
def update_lock(path: str | Path) -> Iterator[None]:
    """Hold the update lock of database `path` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    with open(path.with_name(path.name + UPDATE_LOCK_SUFFIX), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def update_db(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A read-write connection to a copy of database `path`, which replaces `path` atomically when the block
    succeeds (under the update lock) and is discarded when it raises."""
    path = Path(path)
    FeatureStore.open(path).close()  # a clear error for a missing or foreign file
    with update_lock(path), atomic_path(path) as tmp:
        copy_db(path, tmp)
        con = sqlite3.connect(tmp)
        try:
            yield con
            con.commit()
        finally:
            con.close()


def copy_db(src: str | Path, dst: str | Path) -> None:
    """Copy a database file with SQLite's backup API (dst is a plain path, written directly)."""
    with sqlite3.connect(f"{Path(src).resolve().as_uri()}?mode=ro", uri=True) as s:
        d = sqlite3.connect(dst)
        try:
            s.backup(d)
        finally:
            d.close()


# -- reading ---------------------------------------------------------------------------------------
def table_columns(con: sqlite3.Connection, table: str) -> list[str]:
    """The column names of `table` in order ([] when it does not exist)."""
    return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def ensure_tables(con: sqlite3.Connection, schema: str, tables: Sequence[str]) -> None:
    """Create the `tables` of `schema` (CREATE TABLE IF NOT EXISTS statements); one of them found with other
    columns (an older layout) is dropped and recreated."""
    ref = sqlite3.connect(":memory:")
    try:
        ref.executescript(schema)
        expected = {t: table_columns(ref, t) for t in tables}
    finally:
        ref.close()
    for table, columns in expected.items():
        found = table_columns(con, table)
        if found and found != columns:
            con.execute(f"DROP TABLE {table}")
    con.executescript(schema)


def has_column(con: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether `table` has `column` (version 2 added `tokens.bytes` and `labels.score_lower`)."""
    try:
        return any(r[1] == column for r in con.execute(f"PRAGMA table_info({table})").fetchall())
    except sqlite3.DatabaseError:
        return False


def _ints(blob: bytes) -> list[int]:
    return np.frombuffer(blob, dtype="<i4").tolist()


def _floats(blob: bytes) -> list[float]:
    return np.frombuffer(blob, dtype="<f4").tolist()


class FeatureStore:
    """A feature database opened read-only."""

    def __init__(self, path: Path, con: sqlite3.Connection, meta: dict[str, Any]) -> None:
        self.path, self.con, self.meta = path, con, meta
        self.d_sae = int(meta["d_sae"])
        self._unit: Tensor | None = None
        self._has_bytes = has_column(con, "tokens", "bytes")
        self._lower = "score_lower" if has_column(con, "labels", "score_lower") else "NULL"
        con.create_function("fs_words", 2, text_has_words, deterministic=True)

    @classmethod
    def open(cls, path: str | Path, *, full_check: bool = False) -> FeatureStore:
        """Open `path` after a cheap damage check (featurescope.featuredb.check; `full_check`: SQLite's quick_check
        at any size); a missing, unreadable, damaged or foreign file raises FeaturescopeError."""
        path = Path(path)
        if not path.is_file():
            raise FeaturescopeError(f"{path}: no such feature database")
        try:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            rows = con.execute("SELECT key, value FROM meta").fetchall()
            meta = {k: json.loads(v) for k, v in rows}
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:
            raise FeaturescopeError(f"{path}: not a featurescope feature database ({e})") from None
        try:
            check_database(path, con, REQUIRED_TABLES, full=full_check)
            if not isinstance(meta.get("d_sae"), int) or meta["d_sae"] <= 0:
                raise FeaturescopeError(f"{path}: the feature database's meta table is damaged (d_sae)")
        except FeaturescopeError:
            if meta.get("format") == FORMAT:
                con.close()
                raise
        if meta.get("format") != FORMAT:
            con.close()
            raise FeaturescopeError(f"{path}: not a featurescope feature database (format {meta.get('format')!r})")
        if int(meta.get("version", 0)) > VERSION:
            con.close()
            raise FeaturescopeError(f"{path}: feature database version {meta.get('version')} is newer than this "
                                    f"featurescope reads ({VERSION})")
        return cls(path, con, meta)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_id(self, i: int) -> int:
        """`i` if it is a feature id of this database, else a clear error."""
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= int(i) < self.d_sae:
            raise FeaturescopeError(f"feature {i} is out of range: {self.path.name} has features 0..{self.d_sae - 1}")
        return int(i)

    # -- one feature ---------------------------------------------------------------------------
    def feature(self, i: int) -> Feature:
        """Everything about feature `i`."""
        i = self.check_id(i)
        row = self.con.execute("SELECT count, density, mean, std, max, max_context, max_position, decoder_norm "
                               "FROM features WHERE id = ?", (i,)).fetchone()
        stats = FeatureStats(*row)
        hist = self.con.execute("SELECT max, counts FROM histograms WHERE feature = ?", (i,)).fetchone()
        examples = self.examples(i)
        effects = self.con.execute("SELECT sign, token, value FROM logit_effects WHERE feature = ? "
                                   "ORDER BY sign DESC, rank", (i,)).fetchall()
        texts = self.token_texts({t for _, t, _ in effects})  # a lone byte token reads `<0xE2>`
        pos = [TokenEffect(t, texts.get(t, ""), v) for s, t, v in effects if s > 0]
        neg = [TokenEffect(t, texts.get(t, ""), v) for s, t, v in effects if s < 0]
        xy = self.con.execute("SELECT x, y FROM map WHERE feature = ?", (i,)).fetchone()
        return Feature(
            id=i, stats=stats, histogram=Histogram(hist[0], json.loads(hist[1])) if hist else None,
            top=[e for e in examples if e.kind == "top"], quantiles=[e for e in examples if e.kind == "quantile"],
            negatives=[e for e in examples if e.kind == "negative"], positive_logits=pos, negative_logits=neg,
            neighbours=self.neighbours(i), map_xy=tuple(xy) if xy else None, labels=self.labels(i),
        )

    def examples(self, i: int, kind: str | None = None) -> list[Example]:
        """Feature `i`'s examples (all kinds, or one), ordered by kind, interval, rank."""
        i = self.check_id(i)
        sql = "SELECT kind, interval, rank, value, context, position, start, acts FROM examples WHERE feature = ?"
        args: tuple[Any, ...] = (i,)
        if kind is not None:
            sql, args = sql + " AND kind = ?", (i, kind)
        rows = self.con.execute(sql + " ORDER BY kind DESC, interval DESC, rank", args).fetchall()
        ctx = self.context_tokens({r[4] for r in rows})
        raw = self.token_bytes({t for toks in ctx.values() for t in toks})
        merge = {c: Merger([raw.get(t, b"") for t in toks]) for c, toks in ctx.items()}
        out = []
        for kind_, interval, rank, value, c, pos, start, acts_blob in rows:
            acts = _floats(acts_blob)
            ids = ctx[c][start:start + len(acts)]
            merged = merge[c](acts, start)  # characters across the window edge
            out.append(Example(kind_, interval, rank, value, c, pos, start, ids, merged.texts, merged.acts))
        return out

    def labels(self, i: int) -> list[Label]:
        """Feature `i`'s labels, best first (by `Label.rank_score`)."""
        rows = self.con.execute(f"SELECT kind, text, score, details, {self._lower} FROM labels WHERE feature = ?",
                                (self.check_id(i),)).fetchall()
        labels = [Label(k, t, s, json.loads(d), lo) for k, t, s, d, lo in rows]
        return sorted(labels, key=lambda lb: (lb.rank_score, lb.kind == "llm"), reverse=True)

    def context_tokens(self, ids: Iterable[int]) -> dict[int, list[int]]:
        """Token ids of the stored contexts `ids`."""
        return {c: _ints(b) for c, b in self._select_in("SELECT id, tokens FROM contexts WHERE id IN", ids)}

    def token_texts(self, ids: Iterable[int]) -> dict[int, str]:
        """Each token's own text (those stored in the database); a lone byte token reads `<0xNN>` (version 2)."""
        return {i: readable(b) for i, b in self.token_bytes(ids).items()}

    def token_bytes(self, ids: Iterable[int]) -> dict[int, bytes]:
        """Each token's raw bytes (version 1 databases: the UTF-8 of its stored text, "�" for byte tokens)."""
        if not self._has_bytes:
            return {i: t.encode("utf-8") for i, t in self._select_in("SELECT id, text FROM tokens WHERE id IN", ids)}
        return {i: b if b is not None else t.encode("utf-8")
                for i, t, b in self._select_in("SELECT id, text, bytes FROM tokens WHERE id IN", ids)}

    def _select_in(self, sql: str, ids: Iterable[int]) -> list[tuple[Any, ...]]:
        ids = sorted({int(i) for i in ids})
        out: list[tuple[Any, ...]] = []
        for s in range(0, len(ids), 900):
            part = ids[s:s + 900]
            out += self.con.execute(f"{sql} ({', '.join('?' * len(part))})", part).fetchall()
        return out

    # -- all features --------------------------------------------------------------------------
    def max_activations(self) -> Tensor:
        """Each feature's maximum activation over the analysed tokens, float32 [d_sae] (0 if it never fired)."""
        rows = self.con.execute("SELECT max FROM features ORDER BY id").fetchall()
        return torch.tensor([r[0] for r in rows], dtype=torch.float32)

    def densities(self) -> Tensor:
        """Fraction of analysed tokens on which each feature fires, float64 [d_sae]."""
        rows = self.con.execute("SELECT density FROM features ORDER BY id").fetchall()
        return torch.tensor([r[0] for r in rows], dtype=torch.float64)

    def _summaries(self, where: str, args: Sequence[Any], order: str, n: int) -> list[FeatureSummary]:
        sql = ("SELECT f.id, f.density, f.max, COALESCE(l.text, ''), l.score, l.lower FROM features f "
               f"LEFT JOIN (SELECT feature, text, score, {self._lower} AS lower, ROW_NUMBER() OVER (PARTITION BY "
               f"feature ORDER BY {self.label_rank_sql()} DESC, kind = 'llm' DESC) AS r FROM labels) l "
               f"ON l.feature = f.id AND l.r = 1 {where} ORDER BY {order} LIMIT ?")
        return [FeatureSummary(*row) for row in self.con.execute(sql, (*args, n)).fetchall()]

    def label_rank_sql(self) -> str:
        """SQL for `label_rank` over the labels table."""
        return f"COALESCE({self._lower}, score, -1)"

    def top(self, by: str = "density", n: int = 20, *, ascending: bool = False) -> list[FeatureSummary]:
        """`n` features ordered by density, max, label-score, mean or id (highest first unless `ascending`)."""
        column = {"density": "f.density", "max": "f.max", "label-score": "COALESCE(l.lower, l.score, -1)",
                  "mean": "COALESCE(f.mean, 0)", "id": "f.id"}.get(by)
        if column is None:
            raise FeaturescopeError(f"cannot order features by {by!r}; choose one of {', '.join(TOP_BY)}")
        if n <= 0:
            raise FeaturescopeError(f"n must be positive (got {n})")
        direction = "ASC" if ascending else "DESC"
        return self._summaries("", (), f"{column} {direction}, f.id", n)

    def search_labels(self, text: str, n: int = 20) -> list[FeatureSummary]:
        """Features with a label containing `text` as whole words (case-insensitive: "sea" finds "Sea, River",
        not "season"), best ranked label first."""
        if not text or not text.strip():
            raise FeaturescopeError("empty search text")
        query = text.strip()
        pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = ("WHERE f.id IN (SELECT feature FROM labels WHERE text LIKE ? ESCAPE '\\' AND fs_words(text, ?))")
        return self._summaries(where, (pattern, query), "COALESCE(l.lower, l.score, -1) DESC, f.id", n)

    # -- neighbours ----------------------------------------------------------------------------
    def unit_decoder(self) -> Tensor:
        """Unit decoder directions [d_sae, d_in] (float32 from the stored float16), loaded once."""
        if self._unit is None:
            parts = [np.frombuffer(b, dtype="<f2").reshape(r, -1)
                     for r, b in self.con.execute("SELECT rows, data FROM decoder ORDER BY start")]
            if not parts:
                raise FeaturescopeError(f"{self.path}: holds no decoder directions")
            self._unit = torch.from_numpy(np.concatenate(parts).astype(np.float32))
        return self._unit

    def neighbours(self, i: int, n: int = 10) -> list[Neighbour]:
        """The `n` features whose decoder directions have the highest cosine with feature `i`'s.

        Read from the stored table when it holds `n`; otherwise computed from the stored directions.
        """
        i = self.check_id(i)
        if n <= 0:
            raise FeaturescopeError(f"n must be positive (got {n})")
        rows = self.con.execute("SELECT other, cosine FROM neighbours WHERE feature = ? ORDER BY rank LIMIT ?",
                                (i, n)).fetchall()
        if len(rows) < min(n, self.d_sae - 1):
            unit = self.unit_decoder()
            sims = unit @ unit[i]
            sims[i] = -float("inf")
            top = sims.topk(min(n, self.d_sae - 1))
            rows = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        labels = self._best_labels(r[0] for r in rows)
        return [Neighbour(o, c, labels.get(o, "")) for o, c in rows]

    def _best_labels(self, ids: Iterable[int]) -> dict[int, str]:
        best: dict[int, tuple[float, str]] = {}
        for f, text, score, lower in self._select_in(
                f"SELECT feature, text, score, {self._lower} FROM labels WHERE feature IN", ids):
            s = label_rank(score, lower)
            if f not in best or s > best[f][0]:
                best[f] = (s, text)
        return {f: t for f, (_, t) in best.items()}
