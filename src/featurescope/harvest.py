"""Harvest: run a model over a corpus and write its residual stream at layer L to an activation store.

Resumable at shard granularity: each shard is written atomically and then recorded in the manifest
(also atomically), so a run killed at any moment and rerun with the same settings continues after the
last recorded shard and ends with exactly the requested number of activation rows.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from featurescope import __version__
from featurescope.activations import DTYPES, MANIFEST, STORE_FORMAT, STORE_VERSION, shard_name
from featurescope.atomic import read_json, write_json, write_safetensors
from featurescope.cli_args import option
from featurescope.corpus import contexts, open_corpus
from featurescope.errors import FeaturescopeError
from featurescope.model_cache import DEFAULT_LAYERS
from featurescope.models import LanguageModel, load_model

# Settings that must match for a rerun to continue an existing store.
IDENTITY = ("model", "layer", "corpus", "ctx_len", "dtype", "seed", "shard_contexts")


@dataclass
class HarvestConfig:
    """Settings of `featurescope harvest`."""

    out: str = option("", "folder of the activation store (created; rerun the same command to resume)",
                      required=True)
    model: str = option("default", "built-in name, local folder, .gguf file or hub id")
    layer: int | None = option(None, "block whose output is read, 0-based (Gemma 3 270M: 9; else the middle one)")
    corpus: str = option("wiki-en", "wiki-en|fr|es, bible-<codes>, a .txt/.jsonl file or folder, hf:NAME")
    tokens: int = option(1_000_000, "activation rows to store (BOS/special positions are not rows)")
    ctx_len: int = option(128, "tokens per context, BOS first")
    batch_size: int = option(8, "contexts per forward pass")
    dtype: str = option("bfloat16", "storage dtype", choices=tuple(DTYPES))
    shard_contexts: int = option(512, "contexts per shard file (the resume granularity)")
    seed: int = option(0, "seed of the corpus' document order")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    model_dtype: str = option("auto", "compute dtype: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    overwrite: bool = option(False, "delete an existing store of other settings in OUT first")


class HarvestResult(NamedTuple):
    """What `harvest` did."""

    path: Path
    rows: int
    new_rows: int
    shards: int
    seconds: float
    complete: bool


def _identity(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m.get(k) for k in IDENTITY}


def _validate(cfg: HarvestConfig) -> None:
    if not cfg.out:
        raise FeaturescopeError("no output folder given (--out)")
    if cfg.tokens <= 0:
        raise FeaturescopeError(f"--tokens must be positive (got {cfg.tokens})")
    if cfg.ctx_len < 2:
        raise FeaturescopeError(f"--ctx-len must be at least 2 (got {cfg.ctx_len})")
    if cfg.batch_size <= 0 or cfg.shard_contexts <= 0:
        raise FeaturescopeError("--batch-size and --shard-contexts must be positive")
    if cfg.dtype not in DTYPES:
        raise FeaturescopeError(f"unknown storage dtype {cfg.dtype!r}; choose one of {', '.join(DTYPES)}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FeaturescopeError(f"{out}: exists and is not a folder")


def _new_manifest(cfg: HarvestConfig, model: LanguageModel, layer: int, licence: str) -> dict[str, Any]:
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "featurescope_version": __version__,
        "model": cfg.model,
        "model_source": model.source,
        "model_family": model.family,
        "n_layers": model.n_layers,
        "layer": layer,
        "hook": f"blocks.{layer}.output",
        "d_model": model.d_model,
        "dtype": cfg.dtype,
        "ctx_len": cfg.ctx_len,
        "corpus": cfg.corpus,
        "corpus_licence": licence,
        "seed": cfg.seed,
        "shard_contexts": cfg.shard_contexts,
        "bos_id": model.bos_id,
        "special_token_ids": sorted(model.special_ids),
        "tokens_requested": cfg.tokens,
        "complete": False,
        "exhausted": False,
        "shards": [],
        "stats": {"rows": 0, "sum_norm": 0.0, "excluded_positions": 0, "excluded_sum_norm": 0.0},
        "config": asdict(cfg),
    }


def _prepare(cfg: HarvestConfig, out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from: `fresh` for a new store, else the existing one, checked and trimmed."""
    if not (out / MANIFEST).exists():
        return fresh
    old = read_json(out / MANIFEST)
    if old.get("format") != STORE_FORMAT:
        raise FeaturescopeError(f"{out}: holds a {MANIFEST} that is not an activation store's; choose another --out")
    if _identity(old) != _identity(fresh):
        diff = ", ".join(f"{k} {old.get(k)!r} vs {fresh.get(k)!r}" for k in IDENTITY if old.get(k) != fresh.get(k))
        raise FeaturescopeError(
            f"{out}: holds a harvest with other settings ({diff}); use another --out or --overwrite"
        )
    rows = sum(s["rows"] for s in old["shards"])
    if rows > cfg.tokens:
        raise FeaturescopeError(f"{out}: already holds {rows} rows, more than --tokens {cfg.tokens}")
    if old["shards"] and old["shards"][-1].get("partial") and rows < cfg.tokens:
        dropped = old["shards"].pop()  # ends mid-context: redo it with the larger budget
        for key in ("rows", "sum_norm", "excluded_positions", "excluded_sum_norm"):
            old["stats"][key] -= dropped["stats"][key]
    old["tokens_requested"] = cfg.tokens
    old["complete"] = False
    old["config"] = asdict(cfg)
    return old


def _remove_strays(out: Path, manifest: dict[str, Any]) -> None:
    """Delete shard files the manifest does not record (a run killed between a shard and its manifest)."""
    keep = {s["file"] for s in manifest["shards"]}
    for f in itertools.chain(out.glob("shard-*.safetensors"), out.glob(".shard-*.tmp"), out.glob(f".{MANIFEST}.*")):
        if f.name not in keep:
            f.unlink(missing_ok=True)


def _shard_tensors(model: LanguageModel, layer: int, ctxs: list[list[int]], budget: int, cfg: HarvestConfig,
                   special: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
    """Run the model over one shard's contexts; keep at most `budget` non-special positions."""
    tokens = torch.tensor(ctxs, dtype=torch.long)
    mask = ~torch.isin(tokens, special)
    over = torch.cumsum(mask.flatten().long(), 0).view_as(mask) > budget
    mask &= ~over
    stats: dict[str, Any] = {"rows": 0, "sum_norm": 0.0, "excluded_positions": 0, "excluded_sum_norm": 0.0}
    acts = []
    n_ctx = int(mask.any(dim=1).nonzero().max()) + 1 if mask.any() else 0
    for s in range(0, n_ctx, cfg.batch_size):
        ids, m = tokens[s : min(n_ctx, s + cfg.batch_size)], mask[s : min(n_ctx, s + cfg.batch_size)]
        resid = model.residual(ids, layer).float().cpu()
        kept = resid[m]
        norms = resid.norm(dim=-1)
        excluded = torch.isin(ids, special)
        stats["rows"] += int(m.sum())
        stats["sum_norm"] += float(norms[m].sum())
        stats["excluded_positions"] += int(excluded.sum())
        stats["excluded_sum_norm"] += float(norms[excluded].sum())
        acts.append(kept.to(DTYPES[cfg.dtype]))
    tensors = {
        "acts": torch.cat(acts) if acts else torch.zeros(0, model.d_model, dtype=DTYPES[cfg.dtype]),
        "tokens": tokens[:n_ctx].to(torch.int32),
        "mask": mask[:n_ctx].to(torch.uint8),
    }
    return tensors, stats, bool(over.any())


def harvest(cfg: HarvestConfig, *, model: LanguageModel | None = None, progress: bool = True) -> HarvestResult:
    """Write (or continue) the activation store `cfg.out`."""
    _validate(cfg)
    start = time.perf_counter()
    out = Path(cfg.out)
    if cfg.overwrite and (out / MANIFEST).exists():
        for f in itertools.chain(out.glob("shard-*.safetensors"), [out / MANIFEST]):
            f.unlink(missing_ok=True)
    source = open_corpus(cfg.corpus, seed=cfg.seed)
    model = model or load_model(cfg.model, device=cfg.device, dtype=cfg.model_dtype)
    default_layer = DEFAULT_LAYERS.get(cfg.model, model.n_layers // 2)
    layer = model.check_layer(cfg.layer if cfg.layer is not None else default_layer)
    manifest = _prepare(cfg, out, _new_manifest(cfg, model, layer, source.licence))
    out.mkdir(parents=True, exist_ok=True)
    _remove_strays(out, manifest)
    done_rows = sum(s["rows"] for s in manifest["shards"])
    done_ctx = sum(s["contexts"] for s in manifest["shards"])
    if done_rows >= cfg.tokens:
        manifest["complete"] = True
        write_json(out / MANIFEST, manifest)
        return HarvestResult(out, done_rows, 0, len(manifest["shards"]), time.perf_counter() - start, True)

    special = torch.tensor(sorted(model.special_ids) or [-1], dtype=torch.long)
    stream = contexts(source, model.tokenizer, ctx_len=cfg.ctx_len, bos_id=model.bos_id)
    stream = itertools.islice(stream, done_ctx, None)
    bar = tqdm(total=cfg.tokens, initial=done_rows, unit="tok", unit_scale=True, desc="harvest",
               disable=not progress, dynamic_ncols=True)
    new_rows = 0
    while done_rows < cfg.tokens:
        ctxs = list(itertools.islice(stream, cfg.shard_contexts))
        if not ctxs:
            if done_rows == 0:
                bar.close()
                raise FeaturescopeError(
                    f"corpus {cfg.corpus} holds no text (or less than one context of {cfg.ctx_len} tokens)")
            manifest["exhausted"] = True
            break
        tensors, stats, partial = _shard_tensors(model, layer, ctxs, cfg.tokens - done_rows, cfg, special)
        rows = stats["rows"]
        name = shard_name(len(manifest["shards"]))
        write_safetensors(out / name, tensors, metadata={"format": STORE_FORMAT})
        manifest["shards"].append({
            "file": name, "rows": rows, "contexts": len(ctxs), "bytes": (out / name).stat().st_size,
            "partial": partial,
            "stats": stats,
        })
        for key in stats:
            manifest["stats"][key] += stats[key]
        done_rows += rows
        new_rows += rows
        manifest["complete"] = done_rows >= cfg.tokens
        write_json(out / MANIFEST, manifest)
        bar.update(rows)
    bar.close()
    if manifest["exhausted"]:
        manifest["complete"] = True
        write_json(out / MANIFEST, manifest)
        print(f"featurescope: corpus {cfg.corpus} ran out after {done_rows} rows (asked for {cfg.tokens})",
              file=sys.stderr)
    shards = len(manifest["shards"])
    return HarvestResult(out, done_rows, new_rows, shards, time.perf_counter() - start, manifest["complete"])
