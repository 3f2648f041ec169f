"""Harvest on N ranks: rank r runs the model over shards r, r + N, r + 2N, ... of the one corpus order (and
writes that shard of every layer's store that still needs rows).

Every rank reads and tokenizes the whole context stream (cheap next to the forward passes), so every rank
knows each shard's contexts and row count without communication, and cuts the last shard at exactly
`--tokens` rows as a 1-process harvest does. Shards go in rounds of N: each rank writes its shard file
atomically, then rank 0 gathers the round's shard records (JSON over a tensor collective) and rewrites the
manifest. The manifest therefore always lists a prefix of whole shards, each identical to the one a
1-process harvest of the same settings writes, and a rerun on any world size continues the store.
The store folder must be on storage that every rank sees (one machine, or a shared file system).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from featurescope.activations import MANIFEST
from featurescope.atomic import write_json
from featurescope.distributed.world import World, join
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
    write_shard,
)
from featurescope.models import LanguageModel


class Shard(NamedTuple):
    """One shard of the plan: its index in the stores, its contexts, which are held out, and each layer's row
    budget (0 for a layer whose store is full)."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, as NamedTuple allows
    ctxs: list[list[int]]
    heldout: list[bool]
    budgets: list[int]


def plan(stream: Iterator[tuple[list[int], bool]], special: torch.Tensor, cfg: HarvestConfig, first: int,
         done_rows: list[int]) -> Iterator[Shard]:
    """The shards from index `first` on, until `cfg.tokens` rows of every layer are planned or the stream ends."""
    index, done = first, list(done_rows)
    while min(done) < cfg.tokens:
        pairs = list(itertools.islice(stream, cfg.shard_contexts))
        if not pairs:
            return
        ctxs = [c for c, _ in pairs]
        budgets = [max(0, cfg.tokens - d) for d in done]
        yield Shard(index, ctxs, [h for _, h in pairs], budgets)
        rows = int((~torch.isin(torch.tensor(ctxs, dtype=torch.long), special)).sum())
        index, done = index + 1, [d + min(rows, b) for d, b in zip(done, budgets, strict=True)]


def _write(model: LanguageModel, layers: list[int], dirs: list[Path], shard: Shard, cfg: HarvestConfig,
           special: torch.Tensor) -> list[dict[str, Any] | None]:
    """Harvest `shard` and write each layer's file that it has a budget for; each layer's record (or None)."""
    todo = [k for k, b in enumerate(shard.budgets) if b > 0]
    parts = shard_tensors(model, [layers[k] for k in todo], shard.ctxs, [shard.budgets[k] for k in todo], cfg,
                          special, shard.heldout)
    records: list[dict[str, Any] | None] = [None] * len(layers)
    for k, (tensors, stats, partial) in zip(todo, parts, strict=True):
        records[k] = write_shard(dirs[k], shard.index, tensors, stats, partial, len(shard.ctxs))
    return records


def _run(world: World, cfg: HarvestConfig, model: LanguageModel | None, progress: bool) -> HarvestResult:
    start = time.perf_counter()
    out = Path(cfg.out)
    model, layers, source, fresh = open_inputs(cfg, model, str(world.device))
    dirs = store_dirs(out, layers)
    manifests = world.on_main(lambda: open_stores(cfg, out, layers, fresh))
    head = None
    if manifests is not None:
        unfinished = [m for m in manifests if rows(m) < cfg.tokens] or manifests
        shards = unfinished[0]["shards"]
        head = [len(shards), [rows(m) for m in manifests], sum(s["contexts"] for s in shards)]
    first, done, done_ctx = world.broadcast_json(head)
    if min(done) >= cfg.tokens:
        if manifests is not None:
            for d, m in zip(dirs, manifests, strict=True):
                m["complete"] = True
                write_json(d / MANIFEST, m)
        return HarvestResult(out, sum(done), 0, first, time.perf_counter() - start, True, tuple(layers))

    special = special_ids(model)
    stream = itertools.islice(split_contexts(source, model.tokenizer, ctx_len=cfg.ctx_len, bos_id=model.bos_id,
                                             fraction=cfg.heldout), done_ctx, None)
    bar = tqdm(total=cfg.tokens * len(layers), initial=sum(done), unit="tok", unit_scale=True,
               desc=f"harvest ×{world.size}", disable=not (progress and world.is_main), dynamic_ncols=True)
    new_rows, n_shards = 0, first
    while True:
        # planned afresh each round from the rows actually stored: massive-activation positions are found only
        # when the model runs, so a shard may store fewer rows than its non-special positions
        round_ = list(itertools.islice(plan(stream, special, cfg, n_shards, done), world.size))
        if not round_:
            break
        mine = _write(model, layers, dirs, round_[world.rank], cfg, special) if world.rank < len(round_) else None
        gathered = [r for r in world.gather_json(mine) if r is not None]  # one list per shard, in shard order
        for k in range(len(layers)):
            records = [shard[k] for shard in gathered if shard[k] is not None]
            added = sum(r["rows"] for r in records)
            done[k], new_rows = done[k] + added, new_rows + added
            if manifests is not None and records:
                for r in records:
                    add_shard(manifests[k], r)
                manifests[k]["complete"] = done[k] >= cfg.tokens
                write_json(dirs[k] / MANIFEST, manifests[k])
            bar.update(added)
        n_shards += len(gathered)
    bar.close()
    if min(done) < cfg.tokens:  # the corpus ended first
        if sum(done) == 0:
            raise no_text(cfg)
        if manifests is not None:
            for k in range(len(layers)):
                if done[k] < cfg.tokens:
                    ran_out(cfg, dirs[k], manifests[k], done[k])
    world.barrier()
    return HarvestResult(out, sum(done), new_rows, n_shards, time.perf_counter() - start, True, tuple(layers))


def harvest_ranks(cfg: HarvestConfig, *, model: LanguageModel | None = None, progress: bool = True
                  ) -> HarvestResult:
    """This rank's part of `harvest(cfg)` in the process group torchrun describes (every rank calls it)."""
    world = join(cfg.device, cfg.dist_backend)
    try:
        return _run(world, cfg, model, progress)
    finally:
        world.close()
