"""The read-only API over the feature database: info, overview, listings, one feature, neighbours, map, labels."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request

from featurescope.server import limits, schemas, views
from featurescope.server.context import Explorer

router = APIRouter(prefix="/api", tags=["feature database"])
FeatureId = Annotated[int, Path(description="feature id, 0..d_sae-1")]


def explorer(request: Request) -> Explorer:
    """The explorer this app serves."""
    return request.app.state.explorer


@router.get("/info", summary="What the database is and what this explorer can do")
def get_info(request: Request) -> schemas.Info:
    return views.info(explorer(request))


@router.get("/overview", summary="SAE quality (FVU, L0, dead %, CE loss recovered) and the density histogram")
def get_overview(request: Request) -> schemas.Overview:
    return views.overview(explorer(request))


@router.get("/features", summary="Features ordered by density, max activation, mean, label score or id")
def list_features(
    request: Request,
    by: Literal["density", "max", "label-score", "mean", "id"] = "density",
    n: Annotated[int, Query(ge=1, le=limits.MAX_LIST)] = 20,
    ascending: bool = False,
) -> list[schemas.FeatureSummary]:
    with explorer(request).read() as store:
        return [views.summary(s) for s in store.top(by=by, n=n, ascending=ascending)]


@router.get("/features/{feature_id}", summary="Everything about one feature")
def get_feature(request: Request, feature_id: FeatureId) -> schemas.FeatureDetail:
    ex = explorer(request)
    ex.check_id(feature_id)
    with ex.read() as store:
        f = store.feature(feature_id)
    return views.feature(ex, f)


@router.get("/features/{feature_id}/summary", summary="One feature's density, max and best label")
def get_summary(request: Request, feature_id: FeatureId) -> schemas.FeatureSummary:
    ex = explorer(request)
    ex.check_id(feature_id)
    with ex.read() as store:
        return views.feature_summary(store, feature_id)


@router.get("/features/{feature_id}/neighbours",
            summary="Nearest features by cosine similarity of decoder directions")
def get_neighbours(request: Request, feature_id: FeatureId,
                   n: Annotated[int, Query(ge=1, le=limits.MAX_NEIGHBOURS)] = 10) -> list[schemas.Neighbour]:
    ex = explorer(request)
    ex.check_id(feature_id)
    with ex.read() as store:
        return views.neighbours(store.neighbours(feature_id, n=n))


@router.get("/map", summary="Every feature's point on the 2-D map (UMAP or PCA of the decoder directions)")
def get_map(request: Request) -> schemas.MapPoints:
    return explorer(request).cached("map", views.map_points)


@router.get("/search/labels", summary="Features whose label contains the query as whole words (case-insensitive)")
def search_labels(request: Request,
                  q: Annotated[str, Query(min_length=1, max_length=limits.MAX_QUERY_CHARS)],
                  n: Annotated[int, Query(ge=1, le=limits.MAX_LIST)] = 20) -> list[schemas.FeatureSummary]:
    with explorer(request).read() as store:
        return [views.summary(s) for s in store.search_labels(q, n=n)]
