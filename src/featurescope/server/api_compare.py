"""The explorer's API over the SAE comparison a database holds (`featurescope eval SAE SAE … --db DB`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from featurescope.featuredb.compare import read_comparison
from featurescope.server.api_store import explorer

router = APIRouter(prefix="/api", tags=["saes"])


@router.get("/saes", summary="The stored SAE comparison: settings, and per SAE its figures and Pareto flags")
def get_saes(request: Request) -> dict[str, Any]:
    with explorer(request).read() as store:
        data = read_comparison(store.con)
    return {"available": data is not None, **(data or {"saes": []})}
