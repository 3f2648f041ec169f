"""The image side of the explorer's API: a feature's top images (thumbnail + per-patch activations), its top
text-only contexts and modality score, the image/caption probe ranking, and the thumbnails themselves."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from featurescope.errors import FeaturescopeError
from featurescope.featuredb import images as image_tables
from featurescope.server import limits
from featurescope.server.api_store import FeatureId, explorer
from featurescope.server.context import NotFound, finite

router = APIRouter(prefix="/api", tags=["images"])


class ModalityOut(BaseModel):
    image_sum: float
    text_sum: float
    image_count: int
    text_count: int
    score: float | None = Field(description="fraction of the activation mass on image positions")
    balanced: float | None = Field(description="the same per image / text position: 0.5 = no preference")


class ImageOut(BaseModel):
    rank: int
    image: int
    value: float = Field(description="highest activation on any patch of the image")
    row: int = Field(description="patch row of the peak in the grid")
    col: int
    rows: int
    cols: int
    acts: list[float] = Field(description="rows × cols activations, row-major, over the thumbnail")
    ref: str
    text: str
    thumbnail: str = Field(description="URL of the JPEG thumbnail (the part of the image the grid covers)")


class TextOut(BaseModel):
    rank: int
    value: float
    context: int
    position: int
    start: int
    tokens: list[str]
    acts: list[float]


class FeatureImagesOut(BaseModel):
    available: bool = Field(description="false when the database holds no image analysis")
    feature: int
    modality: ModalityOut | None
    images: list[ImageOut]
    texts: list[TextOut]


class ProbeOut(BaseModel):
    feature: int
    consistency: float
    jaccard: float | None
    image_pairs: int
    text_pairs: int
    both_pairs: int
    label: str


def _num(x: float | None) -> float:
    v = finite(x)
    return 0.0 if v is None else v


@router.get("/features/{feature_id}/images", summary="Top images with per-patch activations, top text contexts, "
            "modality score")
def get_feature_images(request: Request, feature_id: FeatureId) -> FeatureImagesOut:
    ex = explorer(request)
    ex.check_id(feature_id)
    with ex.read() as store:
        available = image_tables.has_images(store)
        fi = image_tables.feature_images(store, feature_id)
    m = fi.modality
    return FeatureImagesOut(
        available=available, feature=feature_id,
        modality=ModalityOut(image_sum=_num(m.image_sum), text_sum=_num(m.text_sum), image_count=m.image_count,
                             text_count=m.text_count, score=finite(m.score), balanced=finite(m.balanced))
        if m else None,
        images=[ImageOut(rank=e.rank, image=e.image, value=_num(e.value), row=e.row, col=e.col, rows=e.grid[0],
                         cols=e.grid[1], acts=[_num(a) for a in e.acts], ref=e.ref, text=e.text,
                         thumbnail=f"/api/images/{e.image}.jpg") for e in fi.images],
        texts=[TextOut(rank=t.rank, value=_num(t.value), context=t.context, position=t.position, start=t.start,
                       tokens=t.tokens, acts=[_num(a) for a in t.acts]) for t in fi.texts])


@router.get("/images/{image_id}.jpg", summary="The JPEG thumbnail of an analysed image (negative: probe pair -1-id)",
            response_class=Response)
def get_thumbnail(request: Request, image_id: Annotated[int, Path()]) -> Response:
    with explorer(request).read() as store:
        try:
            data = image_tables.thumbnail(store, image_id)
        except FeaturescopeError as e:
            raise NotFound(str(e)) from None
    return Response(content=data, media_type="image/jpeg", headers={"cache-control": "max-age=3600"})


@router.get("/images/probe", summary="Features ranked by how consistently they fire on paired images and captions")
def get_probe(request: Request, n: Annotated[int, Query(ge=1, le=limits.MAX_LIST)] = 20) -> list[ProbeOut]:
    with explorer(request).read() as store:
        if not image_tables.has_probe(store):
            raise NotFound("this database holds no image/caption probe (run `featurescope image-probe`)")
        return [ProbeOut(**s._asdict()) for s in image_tables.probe_scores(store, n)]
