"""The image side of a feature analysis: stream an image activation store through the SAE once and add, per
feature, its top images with per-patch activations, its top text-only contexts and its modality score to the
feature database (tables in docs/formats/features-db-images.md).

Pass 1 (all contexts): activation mass and firing counts on image vs text positions; the top contexts by the
peak over image positions (= top images, one image per context) and by the peak over text positions.
Pass 2 (only the top images' contexts): their rows are encoded again and each feature's activation on every
patch of its top images' grids is read off. Memory is O(d_sae × K), as in `analyze`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from featurescope._version import __version__
from featurescope.activations import ActivationStore, open_source
from featurescope.analysis.accumulate import Codes, encode_batch, lookup, make_codes
from featurescope.analysis.contexts import EMPTY, TopContexts, window_start
from featurescope.analysis.source import Batch, StoreBatches
from featurescope.config_fields import option
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore, update_db
from featurescope.featuredb.images import ANALYSIS_SCHEMA, ANALYSIS_TABLES, insert, replace_tables
from featurescope.sae import SAE
from featurescope.tokentext import Merger, token_bytes
from featurescope.vision.store import ImagePositions, image_records, is_multimodal, read_positions
from featurescope.vision.store import thumbnail as store_thumbnail

F16_MAX = 65504.0


@dataclass
class ImageAnalysisConfig:
    """Settings of `featurescope analyze-images` (each field is also a `--flag`)."""

    db: str = option("", "feature database (from `featurescope analyze` on an image activation store)")
    activations: str = option("", "the image activation store (default: the one the database records)")
    sae: str = option("", "SAE folder (default: the one the database records)")
    top_images: int = option(8, "top images kept per feature, each with its per-patch activations")
    top_texts: int = option(10, "top text-only contexts kept per feature")
    window: int = option(24, "tokens shown around each text example's peak")
    batch_contexts: int = option(16, "contexts encoded per batch")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")


class ImageAnalysisResult(NamedTuple):
    """What `analyze_images` did."""

    path: Path
    images: int
    """Images analysed (= contexts of the store)."""
    image_features: int
    """Features with score ≥ 0.5 (more of their activation mass on image positions than on text)."""
    seconds: float


class _Positions:
    """Image positions of any global context, read one shard at a time."""

    def __init__(self, store: ActivationStore, offsets: list[int]) -> None:
        self.store, self.offsets = store, offsets
        self.index: int | None = None
        self.data: ImagePositions | None = None

    def get(self, contexts: Tensor) -> ImagePositions:
        """Positions of consecutive global contexts (all in one shard)."""
        first = int(contexts[0])
        shard = int(np.searchsorted(self.offsets, first, side="right")) - 1
        if shard != self.index:
            self.index, self.data = shard, read_positions(self.store, shard)
        assert self.data is not None
        local = contexts - self.offsets[shard]
        d = self.data
        return ImagePositions(d.image[local], d.view[local], d.row[local], d.col[local],
                              [d.records[int(j)] for j in local])


def _subset(codes: Codes, keep: Tensor) -> Codes:
    return make_codes(codes.shape, codes.row[keep], codes.ctx[keep], codes.pos[keep], codes.feat[keep],
                      codes.value[keep])


class _Pass1:
    def __init__(self, d_sae: int, top_images: int, top_texts: int, window: int, device: torch.device) -> None:
        self.image_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.text_sum = torch.zeros_like(self.image_sum)
        self.image_count = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.text_count = torch.zeros_like(self.image_count)
        self.rows = [0, 0]
        """Image rows, text rows."""
        self.images = TopContexts(d_sae, top_images, 1, device)
        self.texts = TopContexts(d_sae, top_texts, window, device)

    def update(self, batch: Batch, codes: Codes, pos: ImagePositions) -> None:
        is_image = (pos.image >= 0).to(codes.ctx.device)
        on_image = is_image[codes.ctx, codes.pos]
        img, txt = _subset(codes, on_image), _subset(codes, ~on_image)
        self.image_sum.index_add_(0, img.feat, img.value.double())
        self.text_sum.index_add_(0, txt.feat, txt.value.double())
        self.image_count += torch.bincount(img.feat, minlength=len(self.image_count))
        self.text_count += torch.bincount(txt.feat, minlength=len(self.text_count))
        rows = batch.mask.to(is_image.device)
        self.rows[0] += int((rows & is_image).sum())
        self.rows[1] += int((rows & ~is_image).sum())
        self.images.update(batch.contexts, img)
        self.texts.update(batch.contexts, txt)


def _grids(store: ActivationStore, sae: SAE, source: StoreBatches, top: TopContexts, positions: _Positions,
           batch_contexts: int, progress: bool) -> dict[tuple[int, int], Tensor]:
    """Per (feature, context) of `top`: the feature's activations on view 0 of that context's image [rows, cols]."""
    f_idx, slot = (top.context != EMPTY).nonzero(as_tuple=True)
    ctx_of = top.context[f_idx, slot]
    wanted = sorted(set(ctx_of.tolist()))
    out: dict[tuple[int, int], Tensor] = {}
    by_ctx: dict[int, list[int]] = {}
    for f, c in zip(f_idx.tolist(), ctx_of.tolist(), strict=True):
        by_ctx.setdefault(c, []).append(f)
    bar = tqdm(total=len(wanted), unit="img", desc="image grids", disable=not progress, dynamic_ncols=True,
               leave=False)
    for s in range(0, len(wanted), batch_contexts):
        chunk = torch.tensor(wanted[s:s + batch_contexts])
        for shard in sorted({int(np.searchsorted(source.offsets, int(c), side="right")) - 1 for c in chunk}):
            lo, hi = source.offsets[shard], source.offsets[shard + 1]
            here = chunk[(chunk >= lo) & (chunk < hi)]
            data = store.read_shard(shard)
            local = here - lo
            per_ctx = data.mask.sum(1)
            before = torch.cumsum(per_ctx, 0) - per_ctx
            acts = torch.cat([data.acts[int(before[j]):int(before[j] + per_ctx[j])] for j in local]).float()
            mask = data.mask[local]
            batch = Batch(here, data.tokens[local].long(), mask, torch.full((len(here),), mask.shape[1]), acts)
            codes = encode_batch(sae, batch)
            pos = positions.get(here)
            for j, c in enumerate(here.tolist()):
                view0 = ((pos.view[j] == 0) & (pos.image[j] >= 0)).nonzero().squeeze(1)
                rows_, cols_ = pos.row[j, view0].long(), pos.col[j, view0].long()
                feats = torch.tensor(by_ctx[c], device=codes.value.device)
                vals = lookup(codes, torch.tensor(j, device=feats.device), view0.to(feats.device)[None, :],
                              feats[:, None]).cpu()
                R, C = int(rows_.max()) + 1, int(cols_.max()) + 1
                for k, f in enumerate(by_ctx[c]):
                    grid = torch.zeros(R, C)
                    grid[rows_, cols_] = vals[k]
                    out[(f, c)] = grid
        bar.update(len(chunk))
    bar.close()
    return out


def _text_rows(p1: _Pass1, source: StoreBatches, records: dict[int, dict[str, Any]], tokenizer: Any
               ) -> list[tuple[Any, ...]]:
    top = p1.texts
    W, T = top.window, source.ctx_len
    order = top.ranked().cpu()
    valid = (top.context != EMPTY).cpu()
    ctx_ids = torch.unique(top.context[top.context != EMPTY].cpu())
    tokens = source.fetch_tokens(ctx_ids)
    row_of = {int(c): j for j, c in enumerate(ctx_ids.tolist())}
    start = window_start(top.position.cpu(), T, W)
    used = {int(t) for t in tokens.flatten().tolist()}
    raw = token_bytes(tokenizer, sorted(used))
    merger: dict[int, Merger] = {}  # per context: its byte tokens merged into characters, once
    rows = []
    for f, slots in enumerate(order.tolist()):
        rank = 0
        for s in slots:
            if not valid[f, s]:
                continue
            c, st = int(top.context[f, s]), int(start[f, s])
            length = min(W, int(records[c]["tokens"]) - st)
            if c not in merger:
                merger[c] = Merger([raw[i] for i in tokens[row_of[c]].tolist()])
            merged = merger[c](top.acts[f, s, :length].float().cpu().tolist(), st)
            acts = np.asarray(merged.acts, dtype="<f4").tobytes()
            rows.append((f, rank, float(top.value[f, s]), c, int(top.position[f, s]), st,
                         json.dumps(merged.texts, ensure_ascii=False), acts))
            rank += 1
    return rows


def _image_rows(p1: _Pass1, grids: dict[tuple[int, int], Tensor]) -> list[tuple[Any, ...]]:
    top = p1.images
    order = top.ranked().cpu()
    rows = []
    for f, slots in enumerate(order.tolist()):
        rank = 0
        for s in slots:
            c = int(top.context[f, s])
            if c == EMPTY:
                continue
            grid = grids[(f, c)]
            peak = int(grid.flatten().argmax())
            blob = grid.flatten().clamp(max=F16_MAX).numpy().astype("<f2").tobytes()
            rows.append((f, rank, c, float(top.value[f, s]), peak // grid.shape[1], peak % grid.shape[1], blob))
            rank += 1
    return rows


def _modality_rows(p1: _Pass1) -> list[tuple[Any, ...]]:
    n_img, n_txt = max(p1.rows[0], 1), max(p1.rows[1], 1)
    rows = []
    for f, (i_sum, t_sum, i_n, t_n) in enumerate(zip(p1.image_sum.tolist(), p1.text_sum.tolist(),
                                                     p1.image_count.tolist(), p1.text_count.tolist(), strict=True)):
        total = i_sum + t_sum
        score = i_sum / total if total > 0 else None
        mi, mt = i_sum / n_img, t_sum / n_txt
        balanced = mi / (mi + mt) if total > 0 and p1.rows[0] and p1.rows[1] else None
        rows.append((f, i_sum, t_sum, i_n, t_n, score, balanced))
    return rows


def analyze_images(db: str | Path, store: ActivationStore, sae: SAE, tokenizer: Any, *, top_images: int = 8,
                   top_texts: int = 10, window: int = 24, batch_contexts: int = 16, device: str = "cpu",
                   progress: bool = True) -> ImageAnalysisResult:
    """Add the image tables for `sae` over image activation store `store` to feature database `db`."""
    t0 = time.perf_counter()
    if not is_multimodal(store):
        raise FeaturescopeError(f"{store.path}: not an image activation store (from `featurescope harvest-images`)")
    if store.d_model != sae.d_in:
        raise FeaturescopeError(f"the store has d_model={store.d_model} but the SAE reads d_in={sae.d_in}")
    if min(top_images, top_texts, batch_contexts) <= 0 or window < 2:
        raise FeaturescopeError("top images, top texts and batch contexts must be positive, the window ≥ 2")
    with FeatureStore.open(db) as fs:
        if fs.d_sae != sae.d_sae:
            raise FeaturescopeError(f"{db} has {fs.d_sae} features but the SAE has {sae.d_sae}")
    sae = sae.to(device).eval()
    source = StoreBatches(store, store.n_rows, batch_contexts)
    positions = _Positions(store, source.offsets)
    window = min(window, source.ctx_len)
    p1 = _Pass1(sae.d_sae, top_images, top_texts, window, torch.device(device))
    bar = tqdm(total=store.n_rows, unit="tok", unit_scale=True, desc="analyze images", disable=not progress,
               dynamic_ncols=True)
    for batch in source.batches():
        p1.update(batch, encode_batch(sae, batch), positions.get(batch.contexts))
        bar.update(len(batch.acts))
    bar.close()
    grids = _grids(store, sae, source, p1.images, positions, batch_contexts, progress)
    records = {int(r["context"]): r for r in image_records(store)}
    image_rows = _image_rows(p1, grids)
    used = sorted({r[2] for r in image_rows})
    modality_rows = _modality_rows(p1)
    meta = {"store": str(Path(store.path).resolve()), "images": len(records), "image_rows": p1.rows[0],
            "text_rows": p1.rows[1], "top_images": top_images, "top_texts": top_texts, "window": window,
            "vision_family": store.manifest.get("vision_family"), "featurescope_version": __version__,
            "score": "image_sum / (image_sum + text_sum)",
            "balanced": "(image_sum / image_rows) / (image_sum / image_rows + text_sum / text_rows)"}
    with update_db(db) as con:
        replace_tables(con, ANALYSIS_SCHEMA, ANALYSIS_TABLES)
        insert(con, "images", ((c, records[c]["ref"], records[c]["text"], records[c]["width"], records[c]["height"],
                                records[c]["grid"][0], records[c]["grid"][1], json.dumps(records[c]["canvas"]),
                                int(records[c]["resized"]), store_thumbnail(store, c)) for c in used))
        insert(con, "modality", modality_rows)
        insert(con, "image_examples", image_rows)
        insert(con, "text_examples", _text_rows(p1, source, records, tokenizer))
        meta["seconds"] = time.perf_counter() - t0
        insert(con, "images_meta", ((k, json.dumps(v)) for k, v in meta.items()))
    image_features = sum(1 for r in modality_rows if r[5] is not None and r[5] >= 0.5)
    return ImageAnalysisResult(Path(db), len(records), image_features, time.perf_counter() - t0)


def run_image_analysis(cfg: ImageAnalysisConfig, *, sae: SAE | None = None, tokenizer: Any = None,
                       progress: bool = True) -> ImageAnalysisResult:
    """`featurescope analyze-images`: the store and SAE default to those the database records."""
    from featurescope.models import default_device, load_model

    with FeatureStore.open(cfg.db) as fs:
        meta = dict(fs.meta)
    path = cfg.activations or meta.get("activations")
    if not path:
        raise FeaturescopeError(f"{cfg.db} was not made from an activation store: pass `activations`",
                                settings=("activations",))
    store = open_source(path)
    if not isinstance(store, ActivationStore):
        raise FeaturescopeError(f"{path}: not an activation store")
    if sae is None:
        sae_path = cfg.sae or meta.get("sae")
        if not sae_path:
            raise FeaturescopeError(f"{cfg.db} does not record its SAE; pass `sae`", settings=("sae",))
        sae = SAE.load(sae_path)
    if tokenizer is None:
        tokenizer = _tokenizer(store) or load_model(meta["model"], device="cpu").tokenizer
    device = default_device() if cfg.device == "auto" else cfg.device
    return analyze_images(cfg.db, store, sae, tokenizer, top_images=cfg.top_images, top_texts=cfg.top_texts,
                          window=cfg.window, batch_contexts=cfg.batch_contexts, device=device, progress=progress)


def _tokenizer(store: ActivationStore) -> Any:
    """The tokenizer of the store's model, loaded alone where it is a local folder (else None)."""
    from transformers import AutoTokenizer

    source = str(store.manifest.get("model_source", ""))
    if source.startswith("local:"):
        try:
            return AutoTokenizer.from_pretrained(source[len("local:"):])
        except (OSError, ValueError):
            return None
    return None


def ensure_image_analysis(db: str | Path, store: ActivationStore, sae: SAE, tokenizer: Any, *, device: str = "cpu",
                          progress: bool = True) -> ImageAnalysisResult | None:
    """`analyze_images` with the default settings when `store` holds images and `db` has no image tables yet."""
    from featurescope.featuredb.images import has_images

    if not is_multimodal(store):
        return None
    with FeatureStore.open(db) as fs:
        if has_images(fs):
            return None
    return analyze_images(db, store, sae, tokenizer, device=device, progress=progress)
