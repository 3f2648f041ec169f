"""The offline suite's results inside a feature database (`featurescope eval SAE --suite --db DB`; schema:
docs/formats/features-db-suite.md): one row per SAE, task and metric, with SAEBench's names.

It is added through `featurescope.featuredb.core.update_db` (a copy renamed into place only when complete, under
the shared update lock); a new run replaces the rows of the SAEs it evaluated and keeps the others. The tables of
`analyze` are never changed, and a database without this table reads as before.
"""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from featurescope.atomic import strict_json
from featurescope.featuredb.core import ensure_tables, table_columns, update_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS suite_results (
    sae TEXT NOT NULL, task TEXT NOT NULL, metric TEXT NOT NULL, value REAL, details TEXT NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY (sae, task, metric));
"""
TABLES = ("suite_results",)
COLUMNS = ("sae", "task", "metric", "value", "details", "created")
SKIPPED = "skipped"
"""The metric name of a task that did not run (value NULL, details {"skipped": reason})."""


def _number(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def rows(sae: str, results: dict[str, Any], created: str) -> list[tuple[Any, ...]]:
    """The table rows of one SAE's suite results (`run_suite`'s record): per task, one row per metric of its
    `eval_result_metrics` (details: the metric's category, the task's `eval_config` and `eval_result_details`),
    or one `skipped` row."""
    out: list[tuple[Any, ...]] = []
    for task in results.values():
        if not isinstance(task, dict) or "eval_type_id" not in task:
            continue
        name = task["eval_type_id"]
        if "skipped" in task:
            out.append((sae, name, SKIPPED, None, json.dumps({"skipped": task["skipped"]}), created))
            continue
        for category, metrics in task["eval_result_metrics"].items():
            details = _details(category, task)
            out += [(sae, name, metric, _number(v), details, created) for metric, v in metrics.items()]
    return out


def _details(category: str, task: dict[str, Any]) -> str:
    data = {"category": category, "eval_config": task.get("eval_config", {}),
            "eval_result_details": task.get("eval_result_details", []), "seconds": task.get("seconds")}
    return json.dumps(strict_json(data), default=str)


def store_suite(path: str | Path, saes: dict[str, dict[str, Any]]) -> None:
    """Write the suite results of `saes` (SAE path → `run_suite` record) into the feature database at `path`,
    replacing earlier rows of those SAEs."""
    created = datetime.now(UTC).isoformat(timespec="seconds")
    with update_db(path) as con:
        ensure_tables(con, SCHEMA, TABLES)
        for sae, results in saes.items():
            con.execute("DELETE FROM suite_results WHERE sae = ?", (sae,))
            con.executemany("INSERT INTO suite_results VALUES (?, ?, ?, ?, ?, ?)", rows(sae, results, created))


def read_suite(con: sqlite3.Connection) -> list[dict[str, Any]]:
    """The stored rows (details left out) in SAE, task, metric order; [] when there are none."""
    if table_columns(con, "suite_results") != list(COLUMNS):
        return []
    cur = con.execute("SELECT sae, task, metric, value, created FROM suite_results ORDER BY sae, task, metric")
    return [dict(zip(("sae", "task", "metric", "value", "created"), r, strict=True)) for r in cur]
