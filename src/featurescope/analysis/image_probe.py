"""The paired image/caption probe: how consistently each feature fires on an image and on a caption of the same
concept (the paper's Golden Gate Bridge photo ↔ "Golden Gate Bridge").

Each pair (a JSONL of {"image": PATH, "text": CAPTION}, or a folder of images with NAME.txt captions) is run
twice: the image alone (its patches), and the caption alone as plain text. Per feature, a_img[p] and a_txt[p]
are its max activation over the image's patches and over the caption's tokens. The scores, over the P pairs:

- consistency = Pearson r of a_img and a_txt across pairs (0 when either is constant): high when the feature
  fires on the same concepts in both modalities and not on the others;
- jaccard = pairs where it fires on both / pairs where it fires on either.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from featurescope._version import __version__
from featurescope.analysis.search import load_for_store
from featurescope.config_fields import option
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore, update_db
from featurescope.featuredb.images import PROBE_SCHEMA, PROBE_TABLES, ProbeScore, insert, probe_scores, replace_tables
from featurescope.models import LanguageModel, default_device
from featurescope.models.vision import as_vision_model
from featurescope.sae import SAE
from featurescope.vision.encode import encode_image
from featurescope.vision.inputs import list_items, thumbnail

KEEP_ACTS = 100
"""Features (best consistency first) whose per-pair activations are stored."""


@dataclass
class ImageProbeConfig:
    """Settings of `featurescope image-probe` (each field is also a `--flag`)."""

    db: str = option("", "feature database (its SAE and model are used unless given)")
    pairs: str = option("", 'JSONL of {"image": PATH, "text": CAPTION}, or a folder of images with NAME.txt captions',
                        required=True)
    sae: str = option("", "SAE folder (default: the one the database records)")
    model: str = option("", "model (default: the one the database records)")
    top: int = option(20, "features to list")
    thumbnail: int = option(192, "longer side of the stored thumbnails, in pixels")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")


class ImageProbeResult(NamedTuple):
    """What `image_probe` did."""

    path: Path
    pairs: int
    top: list[ProbeScore]


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Column-wise Pearson r of [P, F] tensors (0 where either column is constant)."""
    a, b = a.double() - a.double().mean(0), b.double() - b.double().mean(0)
    den = a.norm(dim=0) * b.norm(dim=0)
    return torch.where(den > 0, (a * b).sum(0) / den.clamp_min(1e-300), 0.0)


@torch.inference_mode()
def _text_max(model: LanguageModel, sae: SAE, layer: int, text: str) -> torch.Tensor:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if model.bos_id is not None:
        ids = [model.bos_id, *ids]
    tokens = torch.tensor([ids])
    resid = model.residual(tokens, layer)[0]
    keep = ~torch.isin(tokens[0], torch.tensor(sorted(model.special_ids) or [-1])).to(resid.device)
    if not bool(keep.any()):
        return torch.zeros(sae.d_sae)
    return sae.encode(resid[keep].float()).float().max(dim=0).values.cpu()


def image_probe(cfg: ImageProbeConfig, *, sae: SAE | None = None, model: LanguageModel | None = None,
                progress: bool = True) -> ImageProbeResult:
    """Score every feature of `cfg.db` on the pairs and store the scores in the database."""
    if cfg.top <= 0:
        raise FeaturescopeError(f"`top` must be positive (got {cfg.top})", settings=("top",))
    items = list_items(cfg.pairs)
    if len(items) < 2:
        raise FeaturescopeError(f"{cfg.pairs}: the probe needs at least 2 pairs")
    if any(not it.text for it in items):
        raise FeaturescopeError(f"{cfg.pairs}: {next(it.ref for it in items if not it.text)} has no caption")
    device = default_device() if cfg.device == "auto" else cfg.device
    with FeatureStore.open(cfg.db) as store:
        sae, loaded = load_for_store(store, sae=sae or cfg.sae or None, model=model or cfg.model or None,
                                     device=device)
        layer = int(store.meta["layer"])
    vlm = as_vision_model(loaded)
    a_img, a_txt, thumbs = [], [], []
    for it in tqdm(items, desc="image-probe", unit="pair", disable=not progress, dynamic_ncols=True):
        codes = encode_image(vlm, sae, layer, it.path)
        a_img.append(codes.image.max(dim=0).values if len(codes.image) else torch.zeros(sae.d_sae))
        a_txt.append(_text_max(vlm, sae, layer, it.text))
        thumbs.append(thumbnail(codes.fitted.image, vlm.canvas(codes.fitted.image.size), cfg.thumbnail))
    img, txt = torch.stack(a_img), torch.stack(a_txt)
    r = pearson(img, txt)
    fi, ft = (img > 0).sum(0), (txt > 0).sum(0)
    both, either = ((img > 0) & (txt > 0)).sum(0), ((img > 0) | (txt > 0)).sum(0)
    rows = [(f, float(r[f]), float(both[f] / either[f]) if either[f] else None, int(fi[f]), int(ft[f]), int(both[f]))
            for f in range(sae.d_sae)]
    keep = r.argsort(descending=True, stable=True)[:KEEP_ACTS].tolist()
    meta = {"pairs": str(Path(cfg.pairs).resolve()), "count": len(items), "layer": layer,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "featurescope_version": __version__}
    with update_db(cfg.db) as con:
        replace_tables(con, PROBE_SCHEMA, PROBE_TABLES)
        insert(con, "image_probe_pairs", ((p, it.ref, it.text, thumbs[p]) for p, it in enumerate(items)))
        insert(con, "image_probe_scores", rows)
        insert(con, "image_probe_acts", ((f, p, float(img[p, f]), float(txt[p, f])) for f in keep
                                         for p in range(len(items))))
        insert(con, "image_probe_meta", ((k, json.dumps(v)) for k, v in meta.items()))
    with FeatureStore.open(cfg.db) as store:
        top = probe_scores(store, cfg.top)
    return ImageProbeResult(Path(cfg.db), len(items), top)
