"""The explorer's API over the probes' tables (read-only): a feature's cross-lingual score and aligned examples,
the most cross-lingual features, and the probe categories with the features found for them.

"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from featurescope.featuredb import probes as probe_tables
from featurescope.server.api_store import explorer

router = APIRouter(prefix="/api", tags=["probes"])
FeatureId = Annotated[int, Path(description="feature id, 0..d_sae-1")]
MAX_LIST = 200


@router.get("/features/{feature_id}/multilingual",
            summary="A feature's cross-lingual score and its aligned examples in every language")
def get_multilingual(request: Request, feature_id: FeatureId) -> dict[str, Any]:
    ex = explorer(request)
    ex.check_id(feature_id)
    with ex.read() as store:
        return probe_tables.multilingual_json(store, feature_id)


@router.get("/features/{feature_id}/probes", summary="The probe categories in which a feature was a candidate")
def get_feature_probes(request: Request, feature_id: FeatureId) -> list[dict[str, Any]]:
    ex = explorer(request)
    ex.check_id(feature_id)
    with ex.read() as store:
        return probe_tables.to_json(probe_tables.probes_for_feature(store, feature_id))


@router.get("/multilingual", summary="The most cross-lingual features, best first, with their aligned examples")
def list_multilingual(request: Request, n: Annotated[int, Query(ge=1, le=MAX_LIST)] = 20,
                      listed_only: bool = True) -> dict[str, Any]:
    with explorer(request).read() as store:
        meta = probe_tables.get_meta(store.con, "multilingual")
        features = probe_tables.multilingual_top(store, n, listed_only=listed_only)
        return {"available": meta is not None, "meta": meta, "features": probe_tables.to_json(features)}


@router.get("/probes", summary="Every stored probe category: its verdict and its candidate features")
def list_probes(request: Request) -> list[dict[str, Any]]:
    with explorer(request).read() as store:
        return probe_tables.to_json(probe_tables.probe_summaries(store))
