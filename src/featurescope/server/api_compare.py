"""The explorer's API over the SAE comparison a database holds (`featurescope eval SAE SAE … --db DB`) and the
offline suite's results (`featurescope eval SAE … --suite --db DB`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from featurescope.featuredb.compare import read_comparison
from featurescope.featuredb.suite import read_suite
from featurescope.server.api_store import explorer

router = APIRouter(prefix="/api", tags=["saes"])


@router.get("/saes", summary="The stored SAE comparison: settings, and per SAE its figures and Pareto flags; and "
                             "the offline suite's results (`suite`: one row per SAE, task and metric)")
def get_saes(request: Request) -> dict[str, Any]:
    with explorer(request).read() as store:
        data = read_comparison(store.con)
        suite = read_suite(store.con)
    return {"available": data is not None, **(data or {"saes": []}), "suite": suite}
