"""The SAE comparison inside a feature database (`featurescope eval SAE SAE … --db DB`; schema:
docs/formats/features-db-compare.md): one row per SAE evaluated and the settings they were measured with.

It is added through `featurescope.featuredb.core.update_db` (a copy renamed into place only when complete, under
the shared update lock); a new comparison replaces the stored one. The tables of `analyze` are never changed, and
a database without these tables reads as before.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featurescope.featuredb.core import ensure_tables, table_columns, update_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS sae_compare_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sae_compare (
    rank INTEGER PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, format TEXT NOT NULL,
    architecture TEXT NOT NULL, d_sae INTEGER NOT NULL, k INTEGER, fvu REAL, l0 REAL, dead_fraction REAL,
    loss_recovered REAL, kl REAL, ood_loss_recovered REAL, front_ce INTEGER NOT NULL, front_fvu INTEGER NOT NULL,
    eval TEXT NOT NULL);
"""
TABLES = ("sae_compare_meta", "sae_compare")
ROW_COLUMNS = ("name", "path", "format", "architecture", "d_sae", "k", "fvu", "l0", "dead_fraction", "loss_recovered",
               "kl", "ood_loss_recovered", "front_ce", "front_fvu")
"""The columns after `rank` and before `eval`, named as in compare.json's records."""
SETTINGS = ("format", "version", "featurescope_version", "created", "model", "layer", "split", "in_sample",
            "ce_source", "ood_corpus", "measured_on", "notes")
"""The keys of compare.json kept in sae_compare_meta (all but `saes`)."""


def ensure_schema(con: sqlite3.Connection) -> None:
    """Create the tables; one of an older layout (other columns) is dropped and recreated."""
    ensure_tables(con, SCHEMA, TABLES)


def replace_comparison(con: sqlite3.Connection, data: dict[str, Any]) -> None:
    """Replace the stored comparison by `data` (a compare.json document)."""
    ensure_schema(con)
    con.execute("DELETE FROM sae_compare")
    con.execute("DELETE FROM sae_compare_meta")
    con.executemany("INSERT INTO sae_compare_meta VALUES (?, ?)",
                    [(k, json.dumps(data.get(k))) for k in SETTINGS])
    rows = [(rank, *(_value(sae.get(c)) for c in ROW_COLUMNS), json.dumps(sae.get("eval", {})))
            for rank, sae in enumerate(data["saes"])]
    con.executemany(f"INSERT INTO sae_compare VALUES ({', '.join('?' * (len(ROW_COLUMNS) + 2))})", rows)


def _value(x: Any) -> Any:
    return int(x) if isinstance(x, bool) else x


def store_comparison(path: str | Path, data: dict[str, Any]) -> None:
    """Write `data` (a compare.json document) into the feature database at `path`, replacing any stored one."""
    with update_db(path) as con:
        replace_comparison(con, data)


def _has_tables(con: sqlite3.Connection, names: Sequence[str]) -> bool:
    found = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return all(n in found for n in names)


def read_comparison(con: sqlite3.Connection) -> dict[str, Any] | None:
    """The stored comparison as a compare.json document whose records lack `eval`; None when there is none."""
    if not _has_tables(con, TABLES) or table_columns(con, "sae_compare")[1:-1] != list(ROW_COLUMNS):
        return None
    meta = {k: json.loads(v) for k, v in con.execute("SELECT key, value FROM sae_compare_meta")}
    rows = con.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM sae_compare ORDER BY rank").fetchall()
    saes = [dict(zip(ROW_COLUMNS, r, strict=True)) for r in rows]
    for sae in saes:
        sae["front_ce"], sae["front_fvu"] = bool(sae["front_ce"]), bool(sae["front_fvu"])
    return {**{k: meta.get(k) for k in SETTINGS}, "saes": saes} if saes else None
