"""Harvest: run a model over a corpus and write its residual stream at layer L to an activation store.

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

from tqdm.auto import tqdm

from featurescope.activations import MANIFEST
from featurescope.atomic import read_json, write_json
from featurescope.errors import FeaturescopeError
from featurescope.harvest.heldout import split_contexts
from featurescope.harvest.writer import (
    HarvestConfig,
    HarvestResult,
    add_shard,
    begin_store,
    clear_store,
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
    clear_store(cfg, out)
    model, layer, source, fresh = open_inputs(cfg, model, cfg.device)
    manifest = begin_store(cfg, out, fresh)
    done_rows = sum(s["rows"] for s in manifest["shards"])
    done_ctx = sum(s["contexts"] for s in manifest["shards"])
    if done_rows >= cfg.tokens:
        manifest["complete"] = True
        write_json(out / MANIFEST, manifest)
        return HarvestResult(out, done_rows, 0, len(manifest["shards"]), time.perf_counter() - start, True)

    special = special_ids(model)
    stream = split_contexts(source, model.tokenizer, ctx_len=cfg.ctx_len, bos_id=model.bos_id, fraction=cfg.heldout)
    stream = itertools.islice(stream, done_ctx, None)
    bar = tqdm(total=cfg.tokens, initial=done_rows, unit="tok", unit_scale=True, desc="harvest",
               disable=not progress, dynamic_ncols=True)
    new_rows = 0
    while done_rows < cfg.tokens:
        pairs = list(itertools.islice(stream, cfg.shard_contexts))
        ctxs, held = [c for c, _ in pairs], [h for _, h in pairs]
        if not ctxs:
            if done_rows == 0:
                bar.close()
                raise no_text(cfg)
            manifest["exhausted"] = True
            break
        tensors, stats, partial = shard_tensors(model, layer, ctxs, cfg.tokens - done_rows, cfg, special, held)
        rows = stats["rows"]
        add_shard(manifest, write_shard(out, len(manifest["shards"]), tensors, stats, partial, len(ctxs)))
        done_rows += rows
        new_rows += rows
        manifest["complete"] = done_rows >= cfg.tokens
        write_json(out / MANIFEST, manifest)
        bar.update(rows)
    bar.close()
    if manifest["exhausted"]:
        ran_out(cfg, out, manifest, done_rows)
    shards = len(manifest["shards"])
    return HarvestResult(out, done_rows, new_rows, shards, time.perf_counter() - start, manifest["complete"])


def _spawned(cfg: HarvestConfig, progress: bool) -> HarvestResult:
    """Run `cfg` on `cfg.distributed` local ranks (a torchrun subprocess); `new_rows` is the store's growth."""
    from featurescope.distributed.launch import spawn

    start = time.perf_counter()
    out = Path(cfg.out)
    before = 0
    if not cfg.overwrite and (out / MANIFEST).is_file():
        before = sum(int(s["rows"]) for s in read_json(out / MANIFEST).get("shards", []))
    spawn("harvest", cfg, cfg.distributed, progress=progress)
    m = read_json(out / MANIFEST)
    rows = sum(int(s["rows"]) for s in m["shards"])
    return HarvestResult(out, rows, max(0, rows - before), len(m["shards"]), time.perf_counter() - start,
                         bool(m["complete"]))
