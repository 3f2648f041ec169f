"""`auto` steering values: the calibrated multiple of `calibrate`, cached per (SAE, feature) in the feature database.

The table `steer_calibration` (docs/formats/features-db.md) holds one row per feature, mode and fingerprint
(a digest of the model name, the feature's SAE rows and the rule's settings), so another SAE or a changed rule
never reads a stale choice. A database that cannot be written (read-only file or folder) is left alone: the
choice is computed and only kept in memory by the caller.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sqlite3
from pathlib import Path

from featurescope.models import LanguageModel
from featurescope.sae import SAE
from featurescope.steering.calibrate import Calibration, CalibrationConfig, calibrate_feature, fingerprint

log = logging.getLogger(__name__)

TABLE = "steer_calibration"
SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    feature INTEGER NOT NULL, mode TEXT NOT NULL, fingerprint TEXT NOT NULL, multiple REAL NOT NULL,
    value REAL NOT NULL, max_activation REAL NOT NULL, reason TEXT NOT NULL, trials TEXT NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY (feature, mode, fingerprint)) WITHOUT ROWID"""


def read_cached(con: sqlite3.Connection, feature: int, mode: str, key: str) -> Calibration | None:
    """The cached choice of `feature` under fingerprint `key`, or None (also when the table does not exist)."""
    try:
        row = con.execute(f"SELECT multiple, value, max_activation, reason FROM {TABLE} WHERE feature = ? AND "
                          "mode = ? AND fingerprint = ?", (feature, mode, key)).fetchone()
    except sqlite3.OperationalError:  # no such table: a database no calibration was written to
        return None
    if row is None:
        return None
    return Calibration(feature, mode, float(row[0]), float(row[1]), float(row[2]), str(row[3]), [], [], True)


def writable(path: Path) -> bool:
    """Whether the database file and its folder can be written (the update writes a copy beside it)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def write_cached(path: Path, c: Calibration, key: str) -> bool:
    """Store `c` in the database at `path` (an atomic update); False when it cannot be written."""
    from featurescope.featuredb.core import update_db

    if not writable(path):
        return False
    trials = [{"multiple": t.multiple, "fluent": t.fluent, "changed": t.changed, "concept": round(t.concept, 4),
               "texts": t.texts,
               "run": [f.run for f in t.fluency], "distinct": [round(f.distinct, 4) for f in t.fluency]}
              for t in c.trials]
    try:
        with update_db(path) as con:
            con.execute(SCHEMA)
            con.execute(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (c.feature, c.mode, key, c.multiple, c.value, c.max_activation, c.reason,
                         json.dumps(trials, ensure_ascii=False),
                         datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")))
    except OSError as e:
        log.warning("could not cache the steering calibration in %s: %s", path, e)
        return False
    return True


def auto_value(model: LanguageModel, sae: SAE, feature: int, max_activation: float, *,
               con: sqlite3.Connection | None = None, db: str | Path | None = None,
               cfg: CalibrationConfig | None = None) -> Calibration:
    """The calibrated choice for `feature`: read from `con` (an open feature database) if cached there, else
    computed and, when `db` is a writable database path, stored in it."""
    cfg = cfg or CalibrationConfig()
    key = fingerprint(model, sae, feature, cfg)
    if con is not None:
        hit = read_cached(con, feature, cfg.mode, key)
        if hit is not None and abs(hit.max_activation - max_activation) <= 1e-6 * max(1.0, max_activation):
            return hit
    c = calibrate_feature(model, sae, feature, max_activation, cfg)
    if db is not None:
        write_cached(Path(db), c, key)
    return c
