"""Harvest on N ranks: rank r runs the model over shards r, r + N, r + 2N, ... of the one corpus order.

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
    write_shard,
)
from featurescope.models import LanguageModel


class Shard(NamedTuple):
    """One shard of the plan: its index in the store, its contexts, which are held out, and its row budget."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, as NamedTuple allows
    ctxs: list[list[int]]
    heldout: list[bool]
    budget: int


def plan(stream: Iterator[tuple[list[int], bool]], special: torch.Tensor, cfg: HarvestConfig, first: int,
         done_rows: int) -> Iterator[Shard]:
    """The shards from index `first` on, until `cfg.tokens` rows are planned or the stream ends."""
    index, done = first, done_rows
    while done < cfg.tokens:
        pairs = list(itertools.islice(stream, cfg.shard_contexts))
        if not pairs:
            return
        ctxs = [c for c, _ in pairs]
        budget = cfg.tokens - done
        yield Shard(index, ctxs, [h for _, h in pairs], budget)
        rows = int((~torch.isin(torch.tensor(ctxs, dtype=torch.long), special)).sum())
        index, done = index + 1, done + min(rows, budget)


def _start(cfg: HarvestConfig, out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's part of the setup: --overwrite, the manifest to continue, strays deleted."""
    clear_store(cfg, out)
    return begin_store(cfg, out, fresh)


def _run(world: World, cfg: HarvestConfig, model: LanguageModel | None, progress: bool) -> HarvestResult:
    start = time.perf_counter()
    out = Path(cfg.out)
    model, layer, source, fresh = open_inputs(cfg, model, str(world.device))
    manifest = world.on_main(lambda: _start(cfg, out, fresh))
    head = None
    if manifest is not None:
        shards = manifest["shards"]
        head = [len(shards), sum(s["rows"] for s in shards), sum(s["contexts"] for s in shards)]
    first, done_rows, done_ctx = world.broadcast_json(head)
    if done_rows >= cfg.tokens:
        if manifest is not None:
            manifest["complete"] = True
            write_json(out / MANIFEST, manifest)
        return HarvestResult(out, done_rows, 0, first, time.perf_counter() - start, True)

    special = special_ids(model)
    stream = itertools.islice(split_contexts(source, model.tokenizer, ctx_len=cfg.ctx_len, bos_id=model.bos_id,
                                             fraction=cfg.heldout), done_ctx, None)
    bar = tqdm(total=cfg.tokens, initial=done_rows, unit="tok", unit_scale=True, desc=f"harvest ×{world.size}",
               disable=not (progress and world.is_main), dynamic_ncols=True)
    new_rows, n_shards = 0, first
    while True:
        # planned afresh each round from the rows actually stored: massive-activation positions are found only
        # when the model runs, so a shard may store fewer rows than its non-special positions
        round_ = list(itertools.islice(plan(stream, special, cfg, n_shards, done_rows), world.size))
        if not round_:
            break
        record = None
        if world.rank < len(round_):
            mine = round_[world.rank]
            tensors, stats, partial = shard_tensors(model, layer, mine.ctxs, mine.budget, cfg, special, mine.heldout)
            record = write_shard(out, mine.index, tensors, stats, partial, len(mine.ctxs))
        records = [r for r in world.gather_json(record) if r is not None]
        rows = sum(r["rows"] for r in records)
        done_rows, new_rows, n_shards = done_rows + rows, new_rows + rows, n_shards + len(records)
        if manifest is not None:
            for r in records:
                add_shard(manifest, r)
            manifest["complete"] = done_rows >= cfg.tokens
            write_json(out / MANIFEST, manifest)
        bar.update(rows)
    bar.close()
    if done_rows < cfg.tokens:  # the corpus ended first
        if done_rows == 0:
            raise no_text(cfg)
        if manifest is not None:
            ran_out(cfg, out, manifest, done_rows)
    world.barrier()
    return HarvestResult(out, done_rows, new_rows, n_shards, time.perf_counter() - start, True)


def harvest_ranks(cfg: HarvestConfig, *, model: LanguageModel | None = None, progress: bool = True
                  ) -> HarvestResult:
    """This rank's part of `harvest(cfg)` in the process group torchrun describes (every rank calls it)."""
    world = join(cfg.device, cfg.dist_backend)
    try:
        return _run(world, cfg, model, progress)
    finally:
        world.close()
