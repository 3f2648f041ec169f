"""The features list: every feature, paginated, sorted, filtered by density range, dead / dense and label text."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from featurescope.featuredb.records import FeatureSummary
from featurescope.server import limits, schemas, views
from featurescope.server.api_store import explorer

router = APIRouter(prefix="/api", tags=["feature database"])
DENSE = 0.1
"""A feature is dense when it fires on at least this fraction of the analysed tokens."""
BEST_LABEL = ("LEFT JOIN (SELECT feature, text, score, ROW_NUMBER() OVER (PARTITION BY feature ORDER BY "
              "COALESCE(score, -1) DESC, kind = 'llm' DESC) AS r FROM labels) l ON l.feature = f.id AND l.r = 1")
SORTS = {"id": "f.id", "density": "f.density", "max": "f.max", "label-score": "COALESCE(l.score, -1)"}


class FeaturePage(BaseModel):
    total: int = Field(description="features that pass the filters")
    offset: int
    rows: list[schemas.FeatureSummary]
    dense: float = Field(description="the density from which a feature counts as dense")


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@router.get("/feature-list", summary="Features, paginated and sorted, filtered by density, dead / dense and label")
def feature_list(
    request: Request,
    sort: Literal["id", "density", "max", "label-score"] = "id",
    order: Literal["asc", "desc"] = "asc",
    offset: Annotated[int, Query(ge=0)] = 0,
    n: Annotated[int, Query(ge=1, le=limits.MAX_LIST)] = 50,
    show: Annotated[Literal["all", "alive", "dead", "dense"], Query(description="dead: never fired; dense: "
                                                                    f"density ≥ {DENSE:g}")] = "all",
    min_density: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_density: Annotated[float | None, Query(ge=0, le=1)] = None,
    label: Annotated[str, Query(max_length=limits.MAX_QUERY_CHARS)] = "",
) -> FeaturePage:
    where: list[str] = []
    args: list[Any] = []
    where += {"all": [], "alive": ["f.count > 0"], "dead": ["f.count = 0"], "dense": [f"f.density >= {DENSE}"]}[show]
    if min_density is not None:
        where.append("f.density >= ?")
        args.append(min_density)
    if max_density is not None:
        where.append("f.density <= ?")
        args.append(max_density)
    if label.strip():
        where.append("f.id IN (SELECT feature FROM labels WHERE text LIKE ? ESCAPE '\\')")
        args.append(_like(label.strip()))
    sql_where = f"WHERE {' AND '.join(where)}" if where else ""
    with explorer(request).read() as store:
        total = store.con.execute(f"SELECT COUNT(*) FROM features f {sql_where}", args).fetchone()[0]
        rows = store.con.execute(
            f"SELECT f.id, f.density, f.max, COALESCE(l.text, ''), l.score FROM features f {BEST_LABEL} {sql_where} "
            f"ORDER BY {SORTS[sort]} {order.upper()}, f.id LIMIT ? OFFSET ?", (*args, n, offset)).fetchall()
    return FeaturePage(total=total, offset=offset, dense=DENSE,
                       rows=[views.summary(FeatureSummary(*r)) for r in rows])
