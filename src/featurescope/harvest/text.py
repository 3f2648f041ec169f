"""Harvest: run a model over a corpus and write its residual stream at layer L to an activation store (at
several layers, from one forward pass each, to one store per layer: `featurescope.harvest.layers`).

Resumable at shard granularity: each shard is written atomically and then recorded in the manifest
(also atomically), so a run killed at any moment and rerun with the same settings continues after the
last recorded shard and ends with exactly the requested number of activation rows (held-out rows
included). Whole documents are held out of training (`--heldout`, see `featurescope.harvest.heldout`); their
contexts are interleaved in the one deterministic context stream and flagged in each shard. Under torchrun (or with
`--distributed N`) the ranks share the shards: see `featurescope.harvest.sharded`.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from featurescope.activations import MANIFEST, harvested_layers
from featurescope.atomic import read_json, write_json
from featurescope.errors import FeaturescopeError
from featurescope.harvest.heldout import split_contexts
from featurescope.harvest.layers import open_stores, rows, store_dirs
from featurescope.harvest.writer import (
    HarvestConfig,
    HarvestResult,
    add_shard,
    no_text,
    open_inputs,
    ran_out,
    shard_tensors,
    special_ids,
    validate,
    write_shard,
)
from featurescope.models import LanguageModel

__all__ = ["HarvestConfig", "HarvestResult", "harvest"]


def harvest(cfg: HarvestConfig, *, model: LanguageModel | None = None, progress: bool = True) -> HarvestResult:
    """Write (or continue) the activation store `cfg.out`."""
    validate(cfg)
    from featurescope.distributed.world import launched

    if launched():
        from featurescope.harvest.sharded import harvest_ranks

        return harvest_ranks(cfg, model=model, progress=progress)
    if cfg.distributed > 1:
        if model is not None:
            raise FeaturescopeError("`distributed` starts new processes, which load the model themselves",
                                    settings=("distributed",))
        return _spawned(cfg, progress)
    start = time.perf_counter()
    out = Path(cfg.out)
    model, layers, source, fresh = open_inputs(cfg, model, cfg.device)
    dirs = store_dirs(out, layers)
    manifests = open_stores(cfg, out, layers, fresh)
    done = [rows(m) for m in manifests]
    for d, m, n in zip(dirs, manifests, done, strict=True):
        if n >= cfg.tokens:
            m["complete"] = True
            write_json(d / MANIFEST, m)
    todo = [k for k, n in enumerate(done) if n < cfg.tokens]
    if not todo:
        return _result(out, layers, manifests, done, 0, start)

    special = special_ids(model)
    stream = split_contexts(source, model.tokenizer, ctx_len=cfg.ctx_len, bos_id=model.bos_id, fraction=cfg.heldout)
    stream = itertools.islice(stream, sum(s["contexts"] for s in manifests[todo[0]]["shards"]), None)
    bar = tqdm(total=cfg.tokens * len(layers), initial=sum(done), unit="tok", unit_scale=True,
               desc="harvest" if len(layers) == 1 else f"harvest ×{len(layers)} layers", disable=not progress,
               dynamic_ncols=True)
    new_rows = 0
    while todo:
        pairs = list(itertools.islice(stream, cfg.shard_contexts))
        ctxs, held = [c for c, _ in pairs], [h for _, h in pairs]
        if not ctxs:
            bar.close()
            if sum(done) == 0:
                raise no_text(cfg)
            for k in todo:
                ran_out(cfg, dirs[k], manifests[k], done[k])
            break
        parts = shard_tensors(model, [layers[k] for k in todo], ctxs, [cfg.tokens - done[k] for k in todo], cfg,
                              special, held)
        for k, (tensors, stats, partial) in zip(todo, parts, strict=True):
            add_shard(manifests[k], write_shard(dirs[k], len(manifests[k]["shards"]), tensors, stats, partial,
                                                len(ctxs)))
        for k, (_, stats, _) in zip(todo, parts, strict=True):  # the manifests once every shard is written
            done[k] += stats["rows"]
            new_rows += stats["rows"]
            manifests[k]["complete"] = done[k] >= cfg.tokens
            write_json(dirs[k] / MANIFEST, manifests[k])
            bar.update(stats["rows"])
        todo = [k for k in todo if done[k] < cfg.tokens]
    bar.close()
    return _result(out, layers, manifests, done, new_rows, start)


def _result(out: Path, layers: list[int], manifests: list[dict[str, Any]], done: list[int], new_rows: int,
            start: float) -> HarvestResult:
    return HarvestResult(out, sum(done), new_rows, max(len(m["shards"]) for m in manifests),
                         time.perf_counter() - start, all(m["complete"] for m in manifests), tuple(layers))


def _on_disk(out: Path) -> tuple[int, int, bool]:
    """Rows (every layer's), shards (the longest store's) and completeness of the harvest in `out`."""
    layers = harvested_layers(out) if out.is_dir() else None
    dirs = [out] if layers is None else store_dirs(out, layers)
    manifests = [read_json(d / MANIFEST) for d in dirs if (d / MANIFEST).is_file()]
    if not manifests:
        return 0, 0, False
    return (sum(rows(m) for m in manifests), max(len(m["shards"]) for m in manifests),
            len(manifests) == len(dirs) and all(m["complete"] for m in manifests))


def _spawned(cfg: HarvestConfig, progress: bool) -> HarvestResult:
    """Run `cfg` on `cfg.distributed` local ranks (a torchrun subprocess); `new_rows` is the harvest's growth."""
    from featurescope.distributed.launch import spawn

    start = time.perf_counter()
    out = Path(cfg.out)
    before = 0 if cfg.overwrite else _on_disk(out)[0]
    spawn("harvest", cfg, cfg.distributed, progress=progress)
    total, shards, complete = _on_disk(out)
    layers = harvested_layers(out)
    return HarvestResult(out, total, max(0, total - before), shards, time.perf_counter() - start, complete,
                         tuple(layers) if layers else ())
