"""A cheap check that a SQLite file is a whole, undamaged database before anything reads it.

Always: the SQLite header, the file size against the page count (truncation or appended bytes) and
the presence of the required tables. Files up to `QUICK_CHECK_BYTES` also get SQLite's own
`PRAGMA quick_check` (every page read once: ~20 ms per MB on a laptop CPU); larger ones get it from
`full=True` (used by `analyze` before it trusts a finished database). Damage found later, while
reading, surfaces as sqlite3.DatabaseError, which the CLI and the server report as one line.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from featurescope.errors import FeaturescopeError

HEADER = b"SQLite format 3\x00"
QUICK_CHECK_BYTES = 32 * 2**20
# quick_check also reports rows that break a NOT NULL or CHECK constraint (e.g. a column added to an older
# database): data the readers handle, not damage of the file.
CONSTRAINT_REPORTS = ("NULL value in ", "CHECK constraint failed")


def is_sqlite_file(path: Path) -> bool:
    """Whether `path` starts with the SQLite header (the content check before replacing a file)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HEADER)) == HEADER
    except OSError:
        return False


def damaged(path: str | Path) -> FeaturescopeError:
    """The one-line error of a damaged database."""
    return FeaturescopeError(f"{path}: the feature database is damaged; rebuild it (featurescope analyze "
                             "`overwrite`)", settings=("overwrite",))


def check_database(path: Path, con: sqlite3.Connection, tables: Iterable[str], *, full: bool = False) -> None:
    """Raise FeaturescopeError unless `path` (open as `con`) looks whole and holds every table in `tables`."""
    if not is_sqlite_file(path):
        raise FeaturescopeError(f"{path}: not a SQLite database")
    try:
        page_size = int(con.execute("PRAGMA page_size").fetchone()[0])
        pages = int(con.execute("PRAGMA page_count").fetchone()[0])
        size = path.stat().st_size
        if page_size * pages != size:
            raise FeaturescopeError(f"{path}: the feature database is damaged (truncated or extended: {size} bytes, "
                                    f"expected {page_size * pages}); rebuild it (featurescope analyze `overwrite`)",
                                    settings=("overwrite",))
        have = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = sorted(set(tables) - have)
        if missing:
            raise FeaturescopeError(f"{path}: the feature database lacks tables {', '.join(missing)}; rebuild it "
                                    "(featurescope analyze `overwrite`)", settings=("overwrite",))
        if full or size <= QUICK_CHECK_BYTES:
            result = [r[0] for r in con.execute("PRAGMA quick_check(100)")]
            if any(not line.startswith(CONSTRAINT_REPORTS) for line in result if line != "ok"):
                raise damaged(path)
    except sqlite3.DatabaseError:
        raise damaged(path) from None
