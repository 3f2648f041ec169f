"""`featurescope harvest-images`: run a VLM over images (with captions or a prompt) and store its residual stream
at layer L, recording for every position whether it shows an image patch, and which one.

The store is an ordinary activation store (so `train` and `analyze` read it unchanged) plus, per shard, the
image positions (`featurescope.vision.store`) and one thumbnail per image. One image per context: the prompt
is the image followed by its caption (or `--prompt` for images without one). Resumable at shard granularity:
a rerun with the same settings skips the images already stored (by name), so removing a broken image and
rerunning keeps everything written before.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from featurescope._version import __version__
from featurescope.activations import DTYPES, MANIFEST, STORE_FORMAT, STORE_VERSION, shard_name
from featurescope.atomic import read_json, write_json, write_safetensors
from featurescope.config_fields import option
from featurescope.errors import FeaturescopeError
from featurescope.models.vision import VisionLanguageModel, as_vision_model, load_vision_model
from featurescope.ownership import manifest_of, refuse_foreign, safetensors_format
from featurescope.resume import resume_or_refuse
from featurescope.vision.inputs import ImageItem, fit, image_size, list_items, load_image, thumbnail
from featurescope.vision.store import (
    MODALITY,
    POSITIONS_FORMAT,
    THUMBNAILS,
    images_name,
    shard_refs,
    thumbnail_name,
)

log = logging.getLogger(__name__)

IDENTITY = ("model", "layer", "corpus", "ctx_len", "dtype", "prompt", "chat", "shard_contexts", "thumbnail")
CHAT_MODES = ("auto", "on", "off")


@dataclass
class ImageHarvestConfig:
    """Settings of `featurescope harvest-images`."""

    out: str = option("", "folder of the activation store (created; rerun the same command to resume)", required=True)
    images: str = option("", "a folder of images (captions in NAME.txt beside NAME.jpg) or a JSONL of "
                             '{"image": PATH, "text": CAPTION}', required=True)
    model: str = option("", "image-text-to-text model: local folder or hub id (e.g. google/gemma-3-4b-it)",
                        required=True)
    layer: int | None = option(None, "block whose output is read, 0-based (default: the middle one)")
    prompt: str = option("", "text after each image that has no caption of its own")
    chat: str = option("auto", "wrap image + text in the processor's chat template: auto (if it has one that takes "
                               "images), on, off",
                       choices=CHAT_MODES)
    ctx_len: int = option(2048, "tokens per context (image tokens + text, padded); longer captions are cut")
    batch_size: int = option(4, "images per forward pass")
    dtype: str = option("bfloat16", "storage dtype", choices=tuple(DTYPES))
    shard_contexts: int = option(64, "images per shard file (the resume granularity)")
    thumbnail: int = option(256, "longer side of the stored thumbnails, in pixels")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    model_dtype: str = option("auto", "compute dtype: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    overwrite: bool = option(False, "delete an existing store of other settings in OUT first")


class ImageHarvestResult(NamedTuple):
    """What `harvest_images` did."""

    path: Path
    images: int
    new_images: int
    rows: int
    image_rows: int
    shards: int
    resized: list[str]
    """Refs of the images that were over the processor's limit and were downscaled in this run."""
    seconds: float


class _Shard(NamedTuple):
    tensors: dict[str, torch.Tensor]
    positions: dict[str, torch.Tensor]
    records: list[dict[str, Any]]
    stats: dict[str, float]
    thumbnails: list[bytes]


def _validate(cfg: ImageHarvestConfig) -> None:
    if not cfg.out:
        raise FeaturescopeError("no output folder given (`out`)", settings=("out",))
    if cfg.ctx_len < 2 or cfg.batch_size <= 0 or cfg.shard_contexts <= 0 or cfg.thumbnail < 16:
        raise FeaturescopeError("`ctx_len` must be ≥ 2, `thumbnail` ≥ 16, `batch_size` and `shard_contexts` > 0",
                                settings=("ctx_len", "thumbnail", "batch_size", "shard_contexts"))
    if cfg.dtype not in DTYPES:
        raise FeaturescopeError(f"unknown storage dtype {cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
    if cfg.chat not in CHAT_MODES:
        raise FeaturescopeError(f"`chat` must be one of {', '.join(CHAT_MODES)}", settings=("chat",))
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FeaturescopeError(f"{out}: exists and is not a folder")


def _chat(cfg: ImageHarvestConfig, model: VisionLanguageModel) -> bool:
    if cfg.chat == "on":
        model.prompt("x", chat=True)  # a clear error if there is no usable template
        return True
    return cfg.chat == "auto" and model.chat_ready()


def _new_manifest(cfg: ImageHarvestConfig, model: VisionLanguageModel, layer: int, chat: bool,
                  source: str) -> dict[str, Any]:
    return {
        "format": STORE_FORMAT, "version": STORE_VERSION, "featurescope_version": __version__,
        "modality": MODALITY, "model": cfg.model, "model_source": model.source, "model_family": model.family,
        "vision_family": model.vision_family, "n_layers": model.n_layers, "layer": layer,
        "hook": f"blocks.{layer}.output", "d_model": model.d_model, "dtype": cfg.dtype, "ctx_len": cfg.ctx_len,
        "corpus": source, "corpus_licence": "the images' own", "seed": 0, "prompt": cfg.prompt, "chat": chat,
        "shard_contexts": cfg.shard_contexts, "thumbnail": cfg.thumbnail, "bos_id": model.bos_id,
        "special_token_ids": sorted(model.special_ids), "image_token_id": model.image_token_id,
        "processor_limit": model.limit.describe(), "tokens_requested": None, "complete": False, "exhausted": False,
        "shards": [],
        "stats": {"rows": 0, "sum_norm": 0.0, "excluded_positions": 0, "excluded_sum_norm": 0.0, "image_rows": 0,
                  "text_rows": 0, "images": 0, "resized": 0},
        "config": asdict(cfg),
    }


def _prepare(cfg: ImageHarvestConfig, out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from: `fresh` for a new store, else the existing one (checked)."""
    if not (out / MANIFEST).exists():
        return fresh
    old = read_json(out / MANIFEST)
    if old.get("format") != STORE_FORMAT or old.get("modality") != MODALITY:
        raise FeaturescopeError(f"{out}: holds something other than an image activation store; choose another "
                                "`out` or `overwrite`", settings=("out", "overwrite"))
    resume_or_refuse({k: old.get(k) for k in IDENTITY}, {k: fresh.get(k) for k in IDENTITY}, (),
                     f"{out}: holds a harvest with other settings", values=True)
    old["complete"], old["config"] = False, asdict(cfg)
    return old


def _written_here(p: Path) -> bool:
    """Whether a file of a store folder was written by an image harvest, by its content."""
    if p.name == MANIFEST or (p.name.startswith(".") and p.name.endswith(".tmp")) or p.name.startswith(f".{MANIFEST}."):
        return True
    if p.is_dir():
        return p.name == THUMBNAILS and all(f.suffix == ".jpg" or f.name.endswith(".tmp") for f in p.iterdir())
    return p.suffix == ".safetensors" and safetensors_format(p) in (STORE_FORMAT, POSITIONS_FORMAT)


def _check_owned(out: Path, everything: bool) -> None:
    """Refuse a folder that is not an image store of ours (a non-empty folder without our manifest; with
    `everything` (--overwrite): a foreign manifest or any file a harvest did not write)."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if manifest_of(out / MANIFEST, STORE_FORMAT) is None:
        raise FeaturescopeError(f"{out}: folder is not empty and holds no activation store; nothing was changed — "
                                "choose an empty or new `out`", settings=("out",))
    if everything:
        refuse_foreign(out, _written_here, "an image activation store's")


def _clean(out: Path, manifest: dict[str, Any], everything: bool) -> None:
    """Delete files the manifest does not record (all of the store's files if `everything`); only files
    an image harvest wrote (checked by content) are ever deleted."""
    _check_owned(out, everything)
    keep = set() if everything else {s[k] for s in manifest["shards"] for k in ("file", "images_file")}
    files = itertools.chain(out.glob("shard-*.safetensors"), out.glob("images-*.safetensors"), out.glob(".*.tmp"),
                            out.glob(f".{MANIFEST}.*"))
    for f in files:
        if f.name not in keep and _written_here(f):
            f.unlink(missing_ok=True)
    if everything:
        (out / MANIFEST).unlink(missing_ok=True)
        for f in (out / THUMBNAILS).glob("*.jpg"):
            f.unlink()


def _source_id(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _context(model: VisionLanguageModel, inputs: dict[str, torch.Tensor], b: int, item: ImageItem,
             ctx_len: int, special: torch.Tensor, pad: int) -> tuple[dict[str, torch.Tensor], int, bool]:
    """Token ids, row mask and patch bookkeeping [ctx_len] of sequence `b`; its length; whether it was cut."""
    length = int(inputs["attention_mask"][b].sum())
    ids = inputs["input_ids"][b, :length].cpu()
    found = model.patches(inputs, b)
    if len(found) != 1:
        raise FeaturescopeError(f"{item.ref}: its prompt holds {len(found)} images; each item must hold exactly one "
                                "(is there an image token in its caption?)")
    p = found[0]
    if int(p.positions.max()) >= ctx_len:
        raise FeaturescopeError(f"{item.ref}: its image needs {int(p.positions.max()) + 1} tokens, more than `ctx_len` "
                                f"{ctx_len}; raise `ctx_len`", settings=("ctx_len",))
    cut = length > ctx_len
    length = min(length, ctx_len)
    t = {"tokens": torch.full((ctx_len,), pad, dtype=torch.int32), "mask": torch.zeros(ctx_len, dtype=torch.bool),
         "image": torch.full((ctx_len,), -1, dtype=torch.int32), "view": torch.full((ctx_len,), -1, dtype=torch.int8),
         "row": torch.full((ctx_len,), -1, dtype=torch.int16), "col": torch.full((ctx_len,), -1, dtype=torch.int16)}
    t["tokens"][:length] = ids[:length].to(torch.int32)
    t["mask"][:length] = ~torch.isin(ids[:length], special)
    t["view"][p.positions] = p.view.to(torch.int8)
    t["row"][p.positions] = p.row.to(torch.int16)
    t["col"][p.positions] = p.col.to(torch.int16)
    t["image"][p.positions] = 0  # replaced by the context id by the caller
    return t, length, cut


def _run_shard(model: VisionLanguageModel, layer: int, items: list[ImageItem], first_context: int,
               cfg: ImageHarvestConfig, chat: bool, bar: Any) -> _Shard:
    special = torch.tensor(sorted(model.special_ids) or [-1], dtype=torch.long)
    tok: Any = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    per: list[dict[str, torch.Tensor]] = []
    acts, records, thumbs = [], [], []
    stats = {"rows": 0, "sum_norm": 0.0, "excluded_positions": 0, "excluded_sum_norm": 0.0, "image_rows": 0,
             "text_rows": 0, "images": 0, "resized": 0}
    for s in range(0, len(items), cfg.batch_size):
        batch = items[s:s + cfg.batch_size]
        fitted = [fit(load_image(it.path), model.limit) for it in batch]
        prompts = [model.prompt(it.text or cfg.prompt, chat=chat) for it in batch]
        inputs = model.prepare([f.image for f in fitted], prompts, chat=chat)
        resid = model.residual_inputs(inputs, layer).float().cpu()
        for b, (it, fi) in enumerate(zip(batch, fitted, strict=True)):
            c = first_context + s + b
            t, length, cut = _context(model, inputs, b, it, cfg.ctx_len, special, pad)
            t["image"][t["image"] == 0] = c
            x = resid[b, :length]
            norms = x.norm(dim=-1)
            m = t["mask"][:length]
            is_image = t["image"][:length] >= 0
            acts.append(x[m].to(DTYPES[cfg.dtype]))
            stats["rows"] += int(m.sum())
            stats["sum_norm"] += float(norms[m].sum())
            stats["excluded_positions"] += int((~m).sum())
            stats["excluded_sum_norm"] += float(norms[~m].sum())
            stats["image_rows"] += int((m & is_image).sum())
            stats["text_rows"] += int((m & ~is_image).sum())
            stats["images"] += 1
            stats["resized"] += int(fi.resized)
            per.append(t)
            fw, fh = fi.image.size
            box = model.canvas((fw, fh))
            sx, sy = fi.original_size[0] / fw, fi.original_size[1] / fh
            grid = [int(t["row"][t["view"] == 0].max()) + 1, int(t["col"][t["view"] == 0].max()) + 1]
            records.append({
                "context": c, "ref": it.ref, "text": it.text or cfg.prompt, "width": fi.original_size[0],
                "height": fi.original_size[1], "resized": fi.resized, "input_size": [fw, fh],
                "canvas": [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], "grid": grid, "tokens": length,
                "image_positions": int(is_image.sum()), "truncated": cut})
            thumbs.append(thumbnail(fi.image, box, cfg.thumbnail))
        bar.update(len(batch))
    stacked = {k: torch.stack([t[k] for t in per]) for k in per[0]}
    tensors = {"acts": torch.cat(acts), "tokens": stacked["tokens"], "mask": stacked["mask"].to(torch.uint8)}
    positions = {k: stacked[k] for k in ("image", "view", "row", "col")}
    return _Shard(tensors, positions, records, stats, thumbs)


def _write_file(path: Path, data: bytes) -> None:
    """Write by rename (no fsync: a thumbnail is rewritten unless the shard recording it was written after it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_shard(out: Path, manifest: dict[str, Any], shard: _Shard) -> None:
    index = len(manifest["shards"])
    (out / THUMBNAILS).mkdir(exist_ok=True)
    for rec, data in zip(shard.records, shard.thumbnails, strict=True):
        _write_file(out / THUMBNAILS / thumbnail_name(rec["context"]), data)
    name, pname = shard_name(index), images_name(index)
    write_safetensors(out / pname, shard.positions,
                      metadata={"format": POSITIONS_FORMAT, "images": json.dumps(shard.records)})
    write_safetensors(out / name, shard.tensors, metadata={"format": STORE_FORMAT})
    manifest["shards"].append({
        "file": name, "rows": shard.stats["rows"], "contexts": len(shard.records), "bytes": (out / name).stat().st_size,
        "partial": False, "images_file": pname, "images_bytes": (out / pname).stat().st_size,
        "stats": shard.stats})
    for key, value in shard.stats.items():
        manifest["stats"][key] = manifest["stats"].get(key, 0) + value
    write_json(out / MANIFEST, manifest)


def _report_resized(resized: list[str], limit: str) -> None:
    if resized:
        shown = ", ".join(resized[:5]) + (f", … ({len(resized) - 5} more)" if len(resized) > 5 else "")
        log.warning("featurescope: %d image(s) larger than the processor's limit (%s) were downscaled to it: %s",
                    len(resized), limit, shown)


def harvest_images(cfg: ImageHarvestConfig, *, model: VisionLanguageModel | None = None,
                   progress: bool = True) -> ImageHarvestResult:
    """Write (or continue) the image activation store `cfg.out`."""
    _validate(cfg)
    start = time.perf_counter()
    out = Path(cfg.out)
    items = list_items(cfg.images)
    for it in items:  # every file's header, before anything is written
        image_size(it.path)
    model = as_vision_model(model if model is not None else load_vision_model(cfg.model, device=cfg.device,
                                                                             dtype=cfg.model_dtype))
    layer = model.check_layer(cfg.layer if cfg.layer is not None else model.n_layers // 2)
    chat = _chat(cfg, model)
    if cfg.overwrite and out.is_dir():
        _clean(out, {"shards": []}, everything=True)
    manifest = _prepare(cfg, out, _new_manifest(cfg, model, layer, chat, _source_id(cfg.images)))
    out.mkdir(parents=True, exist_ok=True)
    _clean(out, manifest, everything=False)
    if not (out / MANIFEST).exists():  # before the first shard: a killed run's folder is recognisably ours
        write_json(out / MANIFEST, manifest)
    done = {r for s in manifest["shards"] for r in shard_refs(out, s)}
    todo = [it for it in items if it.ref not in done]
    context = sum(s["contexts"] for s in manifest["shards"])
    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="img", desc="harvest-images",
               disable=not progress, dynamic_ncols=True)
    resized: list[str] = []
    new = 0
    try:
        for s in range(0, len(todo), cfg.shard_contexts):
            part = todo[s:s + cfg.shard_contexts]
            shard = _run_shard(model, layer, part, context, cfg, chat, bar)
            _write_shard(out, manifest, shard)
            resized += [r["ref"] for r in shard.records if r["resized"]]
            context += len(part)
            new += len(part)
    finally:
        bar.close()
        _report_resized(resized, model.limit.describe())
    manifest["complete"] = True
    manifest["items_sha256"] = hashlib.sha256("\n".join(it.ref for it in items).encode()).hexdigest()
    write_json(out / MANIFEST, manifest)
    st = manifest["stats"]
    return ImageHarvestResult(out, int(st["images"]), new, int(st["rows"]), int(st["image_rows"]),
                              len(manifest["shards"]), resized, time.perf_counter() - start)
