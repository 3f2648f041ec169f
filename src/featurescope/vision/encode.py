"""Run one image (and optional text) through a VLM up to layer L and the SAE: the features on every patch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError
from featurescope.models.vision import VisionLanguageModel
from featurescope.sae import SAE
from featurescope.vision.inputs import Fitted, fit, load_image


class ImageCodes(NamedTuple):
    """SAE activations of one image prompt: on its patches and on its text positions."""

    image: Tensor
    """[patches, d_sae] float32, in sequence order."""
    view: Tensor
    """[patches] int64 (0: the finest grid)."""
    row: Tensor
    col: Tensor
    grid: tuple[int, int]
    """(rows, cols) of view 0."""
    text: Tensor
    """[text positions, d_sae] float32 (special positions left out)."""
    fitted: Fitted


def fit_image(image: str | Path | Any, model: VisionLanguageModel) -> Fitted:
    """`image` (a path or a PIL image) decoded and fitted to the model's processor limit."""
    if isinstance(image, str | Path):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FeaturescopeError(f"{path}: no such image file")
        image = load_image(path)
    return fit(image, model.limit)


@torch.inference_mode()
def encode_image(model: VisionLanguageModel, sae: SAE, layer: int, image: str | Path | Any, text: str = "", *,
                 chat: bool = False) -> ImageCodes:
    """The SAE's activations on `image` (a path or a PIL image) followed by `text`, at block `layer`."""
    fitted = fit_image(image, model)
    inputs = model.prepare([fitted.image], [model.prompt(text, chat=chat)], chat=chat)
    resid = model.residual_inputs(inputs, layer)[0]
    found = model.patches(inputs, 0)
    if len(found) != 1:
        raise FeaturescopeError(f"the prompt holds {len(found)} images, not one")
    p = found[0]
    ids = inputs["input_ids"][0]
    keep = ~torch.isin(ids, torch.tensor(sorted(model.special_ids) or [-1], device=ids.device))
    keep[p.positions.to(keep.device)] = False
    x = resid.float()
    return ImageCodes(sae.encode(x[p.positions.to(x.device)]).float().cpu(), p.view, p.row, p.col, p.grid,
                      sae.encode(x[keep]).float().cpu() if bool(keep.any()) else torch.zeros(0, sae.d_sae), fitted)


def grid_of(codes: ImageCodes, feature: int) -> Tensor:
    """Feature `feature`'s activation on every patch of view 0, [rows, cols]."""
    sel = codes.view == 0
    grid = torch.zeros(codes.grid)
    grid[codes.row[sel], codes.col[sel]] = codes.image[sel, feature]
    return grid
