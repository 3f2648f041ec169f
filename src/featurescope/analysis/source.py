"""Batches of whole contexts with their residual-stream rows: from an activation store, or model + corpus.

Every context has a global id (its index in the store, shard after shard, or in the corpus' context
stream), so a run can resume at any context and the analysis can fetch a context's tokens again at the end.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from featurescope.activations import ActivationStore
from featurescope.corpus import open_corpus
from featurescope.errors import FeaturescopeError
from featurescope.harvest.heldout import DEFAULT_HELDOUT, split_contexts
from featurescope.models import LanguageModel
from featurescope.outliers import MAX_NORM_RATIO, outlier_positions


class Batch(NamedTuple):
    """Consecutive whole contexts and the activation rows of their analysed positions."""

    contexts: Tensor
    """[C] int64 global context ids."""
    tokens: Tensor
    """[C, T] int64 token ids."""
    mask: Tensor
    """[C, T] bool: True where the position is analysed (a row of `acts`, row-major)."""
    length: Tensor
    """[C] int64: positions of each context inside the token budget (T except for the very last context)."""
    acts: Tensor
    """[rows, d] float32."""


def _limit(mask: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """`mask` cut after its first `budget` True positions, and each row's length up to the cut."""
    flat = torch.cumsum(mask.flatten().long(), 0).view_as(mask)
    over = mask & (flat > budget)
    T = mask.shape[1]
    length = torch.where(over.any(1), over.float().argmax(1), torch.full((mask.shape[0],), T))
    return mask & ~over, length


def _kept(mask: Tensor) -> int:
    """Contexts up to the last one with an analysed position (later ones are past the token budget)."""
    has = mask.any(1)
    return int(has.nonzero().max()) + 1 if bool(has.any()) else 0


class StoreBatches:
    """Batches from an activation store's shards (`batch_contexts` contexts of one shard at a time)."""

    def __init__(self, store: ActivationStore, tokens: int, batch_contexts: int) -> None:
        self.store, self.tokens, self.batch_contexts = store, tokens, batch_contexts
        self.ctx_len = int(store.manifest["ctx_len"])
        self.offsets = [0]
        for i in range(len(store.shards)):
            self.offsets.append(self.offsets[-1] + self._shard_contexts(i))

    def _shard_contexts(self, i: int) -> int:
        """Contexts in shard i, read from the tensor header only."""
        return int(self._tokens(i, lambda st: st.get_slice("tokens").get_shape()[0]))

    def _read_tokens(self, i: int) -> Tensor:
        return self._tokens(i, lambda st: st.get_tensor("tokens"))

    def _tokens(self, i: int, read: Callable[[Any], Any]) -> Any:
        f = self.store.path / self.store.shards[i]["file"]
        try:
            with safe_open(str(f), framework="pt") as st:
                return read(st)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise FeaturescopeError(f"{f}: corrupt shard ({e})") from None

    def batches(self, start_context: int = 0, rows_done: int = 0) -> Iterator[Batch]:
        """Batches from global context `start_context` on, `rows_done` rows of the budget already used."""
        budget = self.tokens - rows_done
        for i in range(len(self.store.shards)):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            if hi <= start_context or budget <= 0:
                continue
            shard = self.store.read_shard(i)
            rows_before = torch.cumsum(shard.mask.sum(1), 0) - shard.mask.sum(1)
            for s in range(max(start_context - lo, 0), hi - lo, self.batch_contexts):
                if budget <= 0:
                    return
                e = min(s + self.batch_contexts, hi - lo)
                mask, length = _limit(shard.mask[s:e], budget)
                r0 = int(rows_before[s])
                n = int(mask.sum())
                keep = _kept(mask)
                if keep == 0:
                    continue
                yield Batch(torch.arange(lo + s, lo + s + keep), shard.tokens[s:s + keep].long(), mask[:keep],
                            length[:keep], shard.acts[r0:r0 + n].float())
                budget -= n

    def fetch_tokens(self, ids: Tensor) -> Tensor:
        """Token ids [len(ids), T] of global contexts `ids` (sorted, unique)."""
        out = torch.zeros(len(ids), self.ctx_len, dtype=torch.int32)
        for i in range(len(self.store.shards)):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            sel = ((ids >= lo) & (ids < hi)).nonzero().squeeze(1)
            if len(sel):
                out[sel] = self._read_tokens(i)[ids[sel] - lo].to(torch.int32)
        return out


class ModelBatches:
    """Batches computed by running the model over a corpus' contexts (special tokens are not analysed)."""

    def __init__(self, model: LanguageModel, layer: int, corpus: str, seed: int, ctx_len: int, tokens: int,
                 batch_contexts: int) -> None:
        self.model, self.layer, self.corpus, self.seed = model, layer, corpus, seed
        self.ctx_len, self.tokens, self.batch_contexts = ctx_len, tokens, batch_contexts
        self.special = torch.tensor(sorted(model.special_ids) or [-1], dtype=torch.long)

    def _stream(self) -> Iterator[list[int]]:
        source = open_corpus(self.corpus, seed=self.seed)  # the contexts `harvest` would store, in its order
        pairs = split_contexts(source, self.model.tokenizer, ctx_len=self.ctx_len, bos_id=self.model.bos_id,
                               fraction=DEFAULT_HELDOUT)
        return (ctx for ctx, _ in pairs)

    def batches(self, start_context: int = 0, rows_done: int = 0) -> Iterator[Batch]:
        """Batches from context `start_context` of the corpus on, `rows_done` rows of the budget already used."""
        budget = self.tokens - rows_done
        stream: Iterator[list[int]] = itertools.islice(self._stream(), start_context, None)
        first = start_context
        while budget > 0:
            ctxs = list(itertools.islice(stream, self.batch_contexts))
            if not ctxs:
                if first == 0 and rows_done == 0:
                    raise FeaturescopeError(f"corpus {self.corpus} holds no text (or less than one context of "
                                            f"{self.ctx_len} tokens)")
                return
            tokens = torch.tensor(ctxs, dtype=torch.long)
            rows = ~torch.isin(tokens, self.special)
            # the contexts the budget needs, and one more in case massive-activation positions are dropped
            reach = min(len(ctxs), _kept(_limit(rows, budget)[0]) + 1)
            tokens, rows = tokens[:reach], rows[:reach]
            resid = self.model.residual(tokens, self.layer)
            # massive-activation positions are not analysed, as `harvest` does not store them
            rows &= ~outlier_positions(resid.float().norm(dim=-1).cpu(), rows, MAX_NORM_RATIO)
            mask, length = _limit(rows, budget)
            keep = _kept(mask)
            if keep == 0:
                return
            tokens, mask, length, resid = tokens[:keep], mask[:keep], length[:keep], resid[:keep]
            acts = resid[mask.to(resid.device)].float()
            yield Batch(torch.arange(first, first + keep), tokens, mask, length, acts)
            budget -= int(mask.sum())
            first += reach
            if reach < len(ctxs):  # contexts the model did not run on come first in the next batch
                stream = itertools.chain(ctxs[reach:], stream)

    def fetch_tokens(self, ids: Tensor) -> Tensor:
        """Token ids [len(ids), T] of contexts `ids` (sorted, unique), by re-tokenising the corpus."""
        out = torch.zeros(len(ids), self.ctx_len, dtype=torch.int32)
        if not len(ids):
            return out
        wanted = {int(c): j for j, c in enumerate(ids.tolist())}
        last = int(ids.max())
        for c, ctx in enumerate(self._stream()):
            if c in wanted:
                out[wanted[c]] = torch.tensor(ctx, dtype=torch.int32)
            if c >= last:
                break
        return out
