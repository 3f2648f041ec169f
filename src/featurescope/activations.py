"""Activation sources: the sharded on-disk store that `harvest` writes, a plain .npy, or a tensor in memory.

Every source reads as a sequence of chunks (a store's shards, slices of a .npy) and streams shuffled
batches with bounded memory: chunks are visited in a seeded random order, a few at a time (`buffer_rows`),
and the rows of each group are permuted. Batch `b` of an epoch is always the same rows for the same seed,
so training can resume at any step without replaying the data before it.

Stores and .npy files have a held-out part that `train` never reads (`split="train"`) and `eval` measures
on (`split="heldout"`): in a store, the contexts of held-out documents (see `featurescope.harvest.heldout`); in a
.npy of N rows, its last ⌊N / 20⌋ rows. `split="all"` (the default) reads every row.
"""

from __future__ import annotations

import json
import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from featurescope.atomic import read_json
from featurescope.errors import FeaturescopeError

STORE_FORMAT = "featurescope.activations"
STORE_VERSION = 2  # 2: shards flag their held-out contexts; version-1 stores (none held out) are still read
MANIFEST = "manifest.json"
SPLITS = ("all", "train", "heldout")
NPY_HELDOUT_DIVISOR = 20
"""A .npy of N rows holds out its last ⌊N / 20⌋ rows (5 %)."""
LAYERS_INDEX = "layers.json"
"""The index of a multi-layer harvest: one store per layer, in `layer-L/` (`layer_folder`)."""
LAYERS_FORMAT = "featurescope.activation-layers"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_FILE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}
"""safetensors' dtype names."""


def shard_name(index: int) -> str:
    """File name of shard `index` in a store."""
    return f"shard-{index:05d}.safetensors"


def layer_folder(layer: int) -> str:
    """Folder of layer `layer`'s store in a multi-layer harvest."""
    return f"layer-{layer}"


class ShardData(NamedTuple):
    """One shard: activation rows, the token ids of its contexts, and which positions have a row."""

    acts: Tensor
    """[rows, d_model], stored dtype."""
    tokens: Tensor
    """[contexts, ctx_len] int32 token ids."""
    mask: Tensor
    """[contexts, ctx_len] bool: True where the position's activation is a row of `acts` (row-major order)."""
    heldout: Tensor
    """[contexts] bool: True for the contexts of held-out documents (all False in a version-1 store)."""


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise FeaturescopeError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


class ActivationSource:
    """Rows of activations [n_rows, d_model] read chunk by chunk (of one split, for stores and .npy)."""

    d_model: int
    n_rows: int
    split: str = "all"
    heldout_rows: int = 0
    """Rows of the held-out part of the whole source (whatever `split` this reader reads)."""
    model: str | None = None
    layer: int | None = None
    buffer_rows: int = 1 << 18

    # -- to implement ------------------------------------------------------------------------
    def chunk_rows(self) -> list[int]:
        """Row count of each chunk."""
        raise NotImplementedError

    def load_chunk(self, index: int) -> Tensor:
        """Rows of chunk `index` as float32 [rows, d_model]."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def rows(self, start: int, stop: int) -> Tensor:
        """Rows [start, stop) in storage order, float32."""
        start, stop = max(0, start), min(stop, self.n_rows)
        out, offset = [], 0
        for i, n in enumerate(self.chunk_rows()):
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                out.append(self.load_chunk(i)[lo - offset : hi - offset])
            offset += n
            if offset >= stop:
                break
        return torch.cat(out) if out else torch.zeros(0, self.d_model)

    def take(self, index: int, rows: Tensor) -> Tensor:
        """Rows `rows` (int64 positions) of chunk `index`, float32."""
        return self.load_chunk(index)[rows]

    def sample(self, n: int, *, seed: int = 0) -> Tensor:
        """`n` rows drawn without replacement (all rows if fewer), float32; reads only the rows it needs."""
        n = min(n, self.n_rows)
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(self.n_rows, size=n, replace=False))
        out, offset = [], 0
        for i, rows in enumerate(self.chunk_rows()):
            sel = picked[(picked >= offset) & (picked < offset + rows)] - offset
            if len(sel):
                out.append(self.take(i, torch.from_numpy(sel)))
            offset += rows
        return torch.cat(out) if out else torch.zeros(0, self.d_model)

    def num_batches(self, batch_size: int, *, drop_last: bool = False) -> int:
        """Batches in one epoch."""
        return self.n_rows // batch_size if drop_last else math.ceil(self.n_rows / batch_size)

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        drop_last: bool = False,
        shuffle: bool = True,
        device: torch.device | str | None = None,
    ) -> Iterator[Tensor]:
        """Float32 batches [batch_size, d_model] of one epoch, starting at batch `start_batch`.

        With `device`, each buffer of chunks moves there whole and is shuffled there (on a GPU: one copy per
        buffer instead of one per batch); the order of the rows is the same on every device.
        """
        groups = self._groups(seed, epoch, shuffle)
        start_row = start_batch * batch_size
        carry: Tensor | None = None
        offset = 0
        for g, chunk_ids in enumerate(groups):
            n = sum(self.chunk_rows()[i] for i in chunk_ids)
            if offset + n <= start_row:
                offset += n
                continue
            data = torch.cat([self.load_chunk(i).to(device) for i in chunk_ids])
            if shuffle:
                perm = np.random.default_rng([seed, epoch, g, 1]).permutation(n)
                data = data[torch.from_numpy(perm).to(data.device)]
            if offset < start_row:
                data = data[start_row - offset :]
            offset += n
            if carry is not None:
                data = torch.cat([carry, data])
                carry = None
            full = (len(data) // batch_size) * batch_size
            for s in range(0, full, batch_size):
                yield data[s : s + batch_size]
            if full < len(data):
                carry = data[full:].clone()
        if carry is not None and not drop_last and len(carry):
            yield carry

    def _groups(self, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
        sizes = self.chunk_rows()
        order = np.random.default_rng([seed, epoch, 0]).permutation(len(sizes)) if shuffle else range(len(sizes))
        groups: list[list[int]] = [[]]
        rows = 0
        for i in order:
            if groups[-1] and rows + sizes[i] > self.buffer_rows:
                groups.append([])
                rows = 0
            groups[-1].append(int(i))
            rows += sizes[i]
        return [g for g in groups if g]


class TensorSource(ActivationSource):
    """Activations already in memory (tests, synthetic data)."""

    def __init__(self, data: Tensor, *, chunk_size: int = 1 << 16, model: str | None = None,
                 layer: int | None = None) -> None:
        if data.ndim != 2:
            raise FeaturescopeError(f"activations must be 2-D [N, d], got shape {tuple(data.shape)}")
        self.data = data
        self.n_rows, self.d_model = data.shape
        self.chunk_size = chunk_size
        self.model, self.layer = model, layer

    def chunk_rows(self) -> list[int]:
        full, rest = divmod(self.n_rows, self.chunk_size)
        return [self.chunk_size] * full + ([rest] if rest else [])

    def load_chunk(self, index: int) -> Tensor:
        s = index * self.chunk_size
        return self.data[s : s + self.chunk_size].float()


class NpySource(TensorSource):
    """A plain .npy file of shape [N, d], memory-mapped; its last ⌊N / 20⌋ rows are the held-out split."""

    def __init__(self, path: str | Path, *, chunk_size: int = 1 << 16, split: str = "all") -> None:
        _check_split(split)
        path = Path(path)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise FeaturescopeError(f"{path}: no such file") from None
        except (ValueError, OSError) as e:
            raise FeaturescopeError(f"{path}: not a readable .npy file ({e})") from None
        if arr.ndim != 2:
            raise FeaturescopeError(f"{path}: activations must be 2-D [N, d], got shape {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise FeaturescopeError(f"{path}: empty array of shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise FeaturescopeError(f"{path}: activations must be floating point, got {arr.dtype}")
        self.path = path
        self.array = arr
        total, self.d_model = arr.shape
        self.split, self.heldout_rows = split, total // NPY_HELDOUT_DIVISOR
        self.offset = total - self.heldout_rows if split == "heldout" else 0
        self.n_rows = {"all": total, "train": total - self.heldout_rows, "heldout": self.heldout_rows}[split]
        if self.n_rows == 0:
            raise FeaturescopeError(f"{path}: no {split} rows ({total} rows hold out the last ⌊N / 20⌋)")
        self.chunk_size = chunk_size
        self.model = self.layer = None

    def load_chunk(self, index: int) -> Tensor:
        s = index * self.chunk_size
        e = min(s + self.chunk_size, self.n_rows)
        return torch.from_numpy(np.array(self.array[self.offset + s : self.offset + e], dtype=np.float32))

    def take(self, index: int, rows: Tensor) -> Tensor:
        return torch.from_numpy(np.asarray(self.array[self.offset + index * self.chunk_size + rows.numpy()],
                                           dtype=np.float32))


@dataclass
class StoreInfo:
    """The parts of a store's manifest that later stages read."""

    model: str
    layer: int
    d_model: int
    dtype: str
    ctx_len: int
    corpus: str
    n_rows: int
    complete: bool
    heldout: float = 0.0
    """Fraction of documents held out at harvest (0: none; version-1 stores)."""
    heldout_rows: int = 0


class ActivationStore(ActivationSource):
    """A folder written by `featurescope harvest`: manifest.json + shard-NNNNN.safetensors.

    `split` chooses the rows read as chunks: "all", "train" (never the held-out contexts) or "heldout".
    `shards` and `read_shard` always cover the whole store. See docs/formats/activation-store.md.
    """

    def __init__(self, path: str | Path, split: str = "all") -> None:
        _check_split(split)
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise FeaturescopeError(f"{path}: not an activation store (no {MANIFEST})")
        self.path = path
        self.manifest: dict[str, Any] = read_json(path / MANIFEST)
        m = self.manifest
        if m.get("format") != STORE_FORMAT:
            raise FeaturescopeError(f"{path}: {MANIFEST} is not a featurescope activation store manifest")
        if int(m.get("version", 0)) > STORE_VERSION:
            raise FeaturescopeError(f"{path}: store format version {m.get('version')} is newer than supported")
        self.shards: list[dict[str, Any]] = list(m["shards"])
        self.d_model = int(m["d_model"])
        self.total_rows = sum(int(s["rows"]) for s in self.shards)
        self.heldout_rows = sum(int(s.get("heldout_rows", 0)) for s in self.shards)
        self.split = split
        split_rows = [self._split_rows(s) for s in self.shards]
        self._chunks = [(i, n) for i, n in enumerate(split_rows) if n > 0]
        self.n_rows = sum(split_rows)
        self.model = m.get("model")
        self.layer = m.get("layer")
        if self.total_rows == 0:
            raise FeaturescopeError(f"{path}: the store holds no activations yet")
        if self.n_rows == 0:
            raise FeaturescopeError(f"{path}: the store has no {split} rows"
                                    + (" (no held-out part: harvested with `heldout` 0 or by version 1)"
                                       if split == "heldout" else ""), settings=("heldout",))
        for s in self.shards:
            f = path / s["file"]
            if not f.is_file():
                raise FeaturescopeError(f"{path}: shard {s['file']} is missing")
            if f.stat().st_size != int(s["bytes"]):
                raise FeaturescopeError(
                    f"{f}: shard is truncated or changed ({f.stat().st_size} bytes, manifest says {s['bytes']})"
                )

    @property
    def info(self) -> StoreInfo:
        m = self.manifest
        return StoreInfo(
            model=m["model"], layer=int(m["layer"]), d_model=self.d_model, dtype=m["dtype"],
            ctx_len=int(m["ctx_len"]), corpus=m["corpus"], n_rows=self.total_rows, complete=bool(m["complete"]),
            heldout=float(m.get("heldout", 0.0)), heldout_rows=self.heldout_rows,
        )

    def _split_rows(self, shard: dict[str, Any]) -> int:
        held = int(shard.get("heldout_rows", 0))
        return {"all": int(shard["rows"]), "train": int(shard["rows"]) - held, "heldout": held}[self.split]

    def chunk_rows(self) -> list[int]:
        return [n for _, n in self._chunks]

    def read_shard(self, index: int) -> ShardData:
        """Activations, token ids and row mask of shard `index` (validated; the tensors are views of the file,
        memory-mapped: copy-on-write, read from disk as they are used)."""
        f = self.path / self.shards[index]["file"]
        t = map_safetensors(f)
        if set(t) - {"heldout"} != {"acts", "tokens", "mask"}:
            raise FeaturescopeError(f"{f}: corrupt shard (tensors {sorted(t)})")
        acts, tokens, mask = t["acts"], t["tokens"], t["mask"].bool()
        heldout = t["heldout"].bool() if "heldout" in t else torch.zeros(len(tokens), dtype=torch.bool)
        rows = int(self.shards[index]["rows"])
        held_rows = int(self.shards[index].get("heldout_rows", 0))
        if (acts.shape != (rows, self.d_model) or int(mask.sum()) != rows or tokens.shape != mask.shape
                or heldout.shape != (len(tokens),) or int(mask[heldout].sum()) != held_rows):
            raise FeaturescopeError(f"{f}: corrupt shard (shapes do not match the manifest)")
        return ShardData(acts, tokens, mask, heldout)

    def _split_acts(self, index: int) -> tuple[Tensor, Tensor | None]:
        """Shard rows of chunk `index` (the file's view) and the positions of the split's rows in them (None: all)."""
        data = self.read_shard(self._chunks[index][0])
        if self.split == "all":
            return data.acts, None
        row_ctx = data.mask.nonzero()[:, 0]
        return data.acts, (data.heldout[row_ctx] == (self.split == "heldout")).nonzero().squeeze(1)

    def _checked(self, index: int, acts: Tensor) -> Tensor:
        acts = acts.float()
        if not bool(torch.isfinite(acts.sum())) and not bool(torch.isfinite(acts).all()):  # one sum, not a mask
            f = self.path / self.shards[self._chunks[index][0]]["file"]
            raise FeaturescopeError(f"{f}: corrupt shard (non-finite values)")
        return acts

    def load_chunk(self, index: int) -> Tensor:
        acts, keep = self._split_acts(index)
        return self._checked(index, acts if keep is None else acts[keep])

    def take(self, index: int, rows: Tensor) -> Tensor:
        acts, keep = self._split_acts(index)
        return self._checked(index, acts[rows if keep is None else keep[rows]])


def map_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file as views of a private memory map of it (nothing is copied or read until
    used); a damaged file raises FeaturescopeError."""
    try:
        with open(path, "rb") as fh:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        n = int.from_bytes(buf[:8], "little")
        if len(buf) < 8 or not 2 <= n <= len(buf) - 8:
            raise ValueError("bad header length")
        header = json.loads(bytes(buf[8 : 8 + n]))
        out = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype, shape = _FILE_DTYPES[spec["dtype"]], [int(d) for d in spec["shape"]]
            begin, end = (int(o) for o in spec["data_offsets"])
            count = math.prod(shape)
            if end - begin != count * dtype.itemsize or not 0 <= begin <= end <= len(buf) - 8 - n:
                raise ValueError(f"tensor {name!r} does not fit the file")
            out[name] = (torch.frombuffer(buf, dtype=dtype, count=count, offset=8 + n + begin) if count
                         else torch.empty(0, dtype=dtype)).view(shape)
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise FeaturescopeError(f"{path}: corrupt shard ({e})") from None


def harvested_layers(path: str | Path) -> list[int] | None:
    """The layers of the multi-layer harvest in folder `path` (its `layers.json`), or None if it is not one."""
    f = Path(path) / LAYERS_INDEX
    if not f.is_file():
        return None
    index = read_json(f)
    if not isinstance(index, dict) or index.get("format") != LAYERS_FORMAT:
        raise FeaturescopeError(f"{f}: not the index of a multi-layer harvest")
    try:
        return [int(layer) for layer in index["layers"]]
    except (KeyError, TypeError, ValueError) as e:
        raise FeaturescopeError(f"{f}: corrupt index of a multi-layer harvest ({e!r})") from None


def store_path(path: str | Path, layer: int | None = None, *, default: int | None = None) -> Path:
    """The store folder of `layer` in `path`: `path` itself unless it is a multi-layer harvest, whose store
    `layer-L/` is chosen by `layer` (else by `default`, such as the SAE's layer). An error names the layers
    there when `layer` is not one of them."""
    path = Path(path)
    layers = harvested_layers(path) if path.is_dir() else None
    if layers is None:
        return path
    pick = layer if layer is not None else default
    listed = ", ".join(map(str, layers))
    if pick is None:
        raise FeaturescopeError(f"{path}: a harvest of layers {listed}; choose one with `layer`", settings=("layer",))
    if pick not in layers:
        raise FeaturescopeError(f"{path}: no layer {pick} (harvested layers: {listed}; choose one with `layer`)",
                                settings=("layer",))
    return path / layer_folder(pick)


def open_source(path: str | Path, split: str = "all", layer: int | None = None, *,
                default_layer: int | None = None) -> ActivationSource:
    """An activation store folder or a .npy file of shape [N, d], reading rows of `split`.

    In a multi-layer harvest `layer` (else `default_layer`) picks the store (`store_path`); a one-layer store
    must hold `layer` when it is given; a .npy is labelled with it."""
    path = store_path(path, layer, default=default_layer)
    if path.is_dir():
        store = ActivationStore(path, split)
        if layer is not None and store.layer is not None and int(store.layer) != layer:
            raise FeaturescopeError(f"{path}: holds layer {store.layer}, not layer {layer}", settings=("layer",))
        return store
    if path.suffix == ".npy":
        npy = NpySource(path, split=split)
        npy.layer = layer
        return npy
    if not path.exists():
        raise FeaturescopeError(f"{path}: no such file or folder")
    raise FeaturescopeError(f"{path}: expected an activation store folder or a .npy file")
