"""What `featurescope harvest` writes, shared by the one-process and the sharded harvest: its settings
(`HarvestConfig`), the store's manifest and its shards (each written atomically, then recorded).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from featurescope._version import __version__
from featurescope.activations import DTYPES, MANIFEST, STORE_FORMAT, STORE_VERSION, shard_name
from featurescope.atomic import read_json, write_json, write_safetensors
from featurescope.config_fields import option
from featurescope.corpus import TextSource, open_corpus
from featurescope.errors import FeaturescopeError
from featurescope.harvest.heldout import DEFAULT_HELDOUT
from featurescope.models import LanguageModel, load_model
from featurescope.models.cache import DEFAULT_LAYERS
from featurescope.outliers import MAX_NORM_RATIO, outlier_positions
from featurescope.ownership import manifest_of, refuse_foreign, safetensors_format
from featurescope.resume import resume_or_refuse

log = logging.getLogger(__name__)

# Settings that must match for a rerun to continue an existing store.
IDENTITY = ("model", "layer", "corpus", "ctx_len", "dtype", "seed", "shard_contexts", "heldout")


@dataclass
class HarvestConfig:
    """Settings of `featurescope harvest`."""

    out: str = option("", "folder of the activation store (created; rerun the same command to resume)",
                      required=True)
    model: str = option("default", "built-in name, local folder, .gguf file or hub id")
    layer: str | int | None = option(None, "block whose output is read, 0-based (Gemma 3 270M: 9; else the middle "
                                     "one); several, such as 3,9,15: one forward pass, one store each in OUT/layer-L/")
    corpus: str = option("wiki-en", "wiki-en|fr|es, bible-<codes>, a .txt/.jsonl file or folder, hf:NAME")
    tokens: int = option(1_000_000, "activation rows to store (BOS/special positions are not rows)")
    ctx_len: int = option(128, "tokens per context, BOS first")
    batch_size: int = option(8, "contexts per forward pass")
    dtype: str = option("bfloat16", "storage dtype", choices=tuple(DTYPES))
    shard_contexts: int = option(512, "contexts per shard file (the resume granularity)")
    seed: int = option(0, "seed of the corpus' document order")
    heldout: float = option(DEFAULT_HELDOUT, "fraction of documents (and contexts) held out of training, for eval "
                            "(0 disables)")
    max_norm_ratio: float = option(MAX_NORM_RATIO, "positions whose residual norm exceeds this × the batch's median "
                                   "are not rows, like BOS (massive activations; 0 keeps them)")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    model_dtype: str = option("auto", "compute dtype: auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    overwrite: bool = option(False, "delete an existing store of other settings in OUT first")
    distributed: int = option(0, "start N local ranks (torchrun --standalone); under torchrun the ranks are its own")
    dist_backend: str = option("auto", "torch.distributed backend (auto: nccl on CUDA, else gloo)",
                               choices=("auto", "nccl", "gloo"))

    def __post_init__(self) -> None:
        self.layer = parse_layers(self.layer)


def parse_layers(value: str | int | None) -> str | int | None:
    """`layer` as stored: None (the model's default), one block index, or several as sorted "3,9,15"."""
    if value is None or isinstance(value, int):
        return value
    try:
        layers = sorted({int(part) for part in str(value).split(",")})
    except ValueError:
        raise FeaturescopeError(f"`layer` must be a block index or several such as 3,9,15 (got {value!r})",
                                settings=("layer",)) from None
    return layers[0] if len(layers) == 1 else ",".join(map(str, layers))


class HarvestResult(NamedTuple):
    """What `harvest` did; with several layers, `rows` and `new_rows` add up every layer's store and `shards`
    counts the shards of the longest."""

    path: Path
    rows: int
    new_rows: int
    shards: int
    seconds: float
    complete: bool
    layers: tuple[int, ...] = ()


def _identity(m: dict[str, Any]) -> dict[str, Any]:
    """The settings a rerun must repeat (a version-1 store has no held-out part: `heldout` 0)."""
    return {k: m.get(k, 0.0 if k == "heldout" else None) for k in IDENTITY}


def validate(cfg: HarvestConfig) -> None:
    if not cfg.out:
        raise FeaturescopeError("no output folder given (`out`)", settings=("out",))
    if cfg.tokens <= 0:
        raise FeaturescopeError(f"`tokens` must be positive (got {cfg.tokens})", settings=("tokens",))
    if cfg.ctx_len < 2:
        raise FeaturescopeError(f"`ctx_len` must be at least 2 (got {cfg.ctx_len})", settings=("ctx_len",))
    if cfg.batch_size <= 0 or cfg.shard_contexts <= 0:
        raise FeaturescopeError("`batch_size` and `shard_contexts` must be positive",
                                settings=("batch_size", "shard_contexts"))
    if cfg.distributed < 0:
        raise FeaturescopeError(f"`distributed` must be 0 or more (got {cfg.distributed})", settings=("distributed",))
    if not 0 <= cfg.heldout <= 0.5:
        raise FeaturescopeError(f"`heldout` must be between 0 and 0.5 (got {cfg.heldout})", settings=("heldout",))
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
        "heldout": cfg.heldout,
        "shard_contexts": cfg.shard_contexts,
        "max_norm_ratio": cfg.max_norm_ratio,
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
        raise FeaturescopeError(f"{out}: holds a {MANIFEST} that is not an activation store's; choose another `out`",
                                settings=("out",))
    resume_or_refuse(_identity(old), _identity(fresh), (), f"{out}: holds a harvest with other settings",
                     values=True)
    rows = sum(s["rows"] for s in old["shards"])
    if rows > cfg.tokens:
        raise FeaturescopeError(f"{out}: already holds {rows} rows, more than `tokens` {cfg.tokens}",
                                settings=("tokens",))
    if old["shards"] and old["shards"][-1].get("partial") and rows < cfg.tokens:
        trim(old, len(old["shards"]) - 1)  # ends mid-context: redo it with the larger budget
    old["version"] = STORE_VERSION  # new shards record their held-out contexts (none in a version-1 store)
    old["heldout"] = cfg.heldout
    old["tokens_requested"] = cfg.tokens
    old["complete"] = False
    old["config"] = asdict(cfg)
    return old


def trim(manifest: dict[str, Any], n: int) -> None:
    """Forget the manifest's shards after the first `n` (they will be harvested again)."""
    while len(manifest["shards"]) > n:
        dropped = manifest["shards"].pop()
        for key in ("rows", "sum_norm", "excluded_positions", "excluded_sum_norm"):
            manifest["stats"][key] -= dropped["stats"][key]
        manifest["complete"] = manifest["exhausted"] = False


def _ours(keep: set[str]) -> Callable[[Path], bool]:
    """Whether an entry of a store folder was written by a harvest: the manifest, a file in `keep` (those it
    records), a shard whose safetensors metadata names our format, or an unfinished atomic write of one of them."""
    def check(p: Path) -> bool:
        if not p.is_file():
            return False
        if p.name == MANIFEST or p.name in keep:
            return True
        if p.name.startswith((".shard-", f".{MANIFEST}.")) and p.name.endswith(".tmp"):
            return True
        return p.suffix == ".safetensors" and safetensors_format(p) == STORE_FORMAT
    return check


def remove_strays(out: Path, manifest: dict[str, Any]) -> None:
    """Delete shard files the manifest does not record (a run killed between a shard and its manifest):
    only those whose content shows a harvest wrote them."""
    keep = {s["file"] for s in manifest["shards"]}
    ours = _ours(set())
    for f in itertools.chain(out.glob("shard-*.safetensors"), out.glob(".shard-*.tmp"), out.glob(f".{MANIFEST}.*")):
        if f.name not in keep and ours(f):
            f.unlink(missing_ok=True)


def open_inputs(cfg: HarvestConfig, model: LanguageModel | None, device: str
                ) -> tuple[LanguageModel, list[int], TextSource, list[dict[str, Any]]]:
    """The model, the resolved layers (ascending), the corpus and a fresh manifest of each layer's store."""
    source = open_corpus(cfg.corpus, seed=cfg.seed)
    model = model or load_model(cfg.model, device=device, dtype=cfg.model_dtype)
    if cfg.layer is None:
        layers = [DEFAULT_LAYERS.get(cfg.model, model.n_layers // 2)]
    else:
        layers = [int(part) for part in str(cfg.layer).split(",")]
    layers = [model.check_layer(layer) for layer in layers]
    return model, layers, source, [_new_manifest(cfg, model, layer, source.licence) for layer in layers]


def begin_store(cfg: HarvestConfig, out: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """Create or check the store folder and return the manifest to continue from (strays deleted).

    A folder without our manifest must be empty (a store that lost its manifest, or a user's folder,
    is refused, never cleared); a new store's manifest is written before its first shard.
    """
    new = not (out / MANIFEST).exists()
    if new and out.is_dir() and any(out.iterdir()):
        raise FeaturescopeError(f"{out}: folder is not empty and holds no activation store ({MANIFEST}); "
                                "choose an empty or new `out`", settings=("out",))
    manifest = _prepare(cfg, out, fresh)
    out.mkdir(parents=True, exist_ok=True)
    remove_strays(out, manifest)
    if new:
        write_json(out / MANIFEST, manifest)
    return manifest


def clear_store(cfg: HarvestConfig, out: Path) -> None:
    """With --overwrite, delete the store in `out` (its manifest and the shards it wrote); a folder whose
    manifest is not a store's, or that holds other files too, is refused with nothing deleted."""
    if not (cfg.overwrite and (out / MANIFEST).exists()):
        return
    manifest = manifest_of(out / MANIFEST, STORE_FORMAT)
    if manifest is None:
        raise FeaturescopeError(f"{out}: holds a {MANIFEST} that is not an activation store's; "
                                "`overwrite` deletes only a store; choose another `out`",
                                settings=("overwrite", "out"))
    ours = _ours({str(s.get("file")) for s in manifest.get("shards", []) if isinstance(s, dict)})
    refuse_foreign(out, ours, "an activation store's")
    for f in sorted(out.iterdir(), key=lambda p: p.name == MANIFEST):  # the manifest last
        if ours(f):
            f.unlink(missing_ok=True)


def no_text(cfg: HarvestConfig) -> FeaturescopeError:
    """The error of a corpus with not even one context."""
    return FeaturescopeError(f"corpus {cfg.corpus} holds no text (or less than one context of {cfg.ctx_len} tokens)")


def ran_out(cfg: HarvestConfig, out: Path, manifest: dict[str, Any], rows: int) -> None:
    """Record that the corpus ended before `--tokens` rows (the store is complete) and say so."""
    manifest["exhausted"] = manifest["complete"] = True
    write_json(out / MANIFEST, manifest)
    log.warning("featurescope: corpus %s ran out after %d rows (asked for %d)", cfg.corpus, rows, cfg.tokens)


def special_ids(model: LanguageModel) -> torch.Tensor:
    """Token ids that are never rows (the model's special tokens), as a tensor for `torch.isin`."""
    return torch.tensor(sorted(model.special_ids) or [-1], dtype=torch.long)


def write_shard(out: Path, index: int, tensors: dict[str, torch.Tensor], stats: dict[str, Any], partial: bool,
                contexts: int) -> dict[str, Any]:
    """Write shard `index` atomically; its manifest record (with its held-out contexts and rows)."""
    name = shard_name(index)
    write_safetensors(out / name, tensors, metadata={"format": STORE_FORMAT})
    held = tensors["heldout"].bool()
    return {"file": name, "rows": stats["rows"], "contexts": contexts, "bytes": (out / name).stat().st_size,
            "partial": partial, "heldout_contexts": int(held.sum()),
            "heldout_rows": int(tensors["mask"][held].sum()), "stats": stats}


def add_shard(manifest: dict[str, Any], record: dict[str, Any]) -> None:
    """Append a shard record to the manifest and its totals."""
    manifest["shards"].append(record)
    for key, value in record["stats"].items():
        manifest["stats"][key] += value


class _LayerRows:
    """The rows of one layer's store in one shard, batch by batch: its own row mask, budget and statistics."""

    def __init__(self, mask: torch.Tensor, budget: int) -> None:
        self.mask, self.remaining, self.cut, self.open = mask, budget, False, True
        self.stats: dict[str, Any] = {"rows": 0, "sum_norm": 0.0, "excluded_positions": 0, "excluded_sum_norm": 0.0}
        self.acts: list[torch.Tensor] = []

    def close_if_spent(self, s: int) -> bool:
        """Stop at batch `s` once the budget is spent (later contexts are not stored: the shard is partial);
        whether this layer still reads batch `s`."""
        if self.open and self.remaining <= 0:
            self.cut |= bool(self.mask[s:].any())
            self.mask[s:] = False
            self.open = False
        return self.open

    def add(self, resid: torch.Tensor, s: int, cfg: HarvestConfig) -> None:
        """Keep the positions of the batch at context `s` that are neither special nor outliers, within budget."""
        m = self.mask[s : s + cfg.batch_size]  # a view of `mask`
        norms = resid.norm(dim=-1)
        m &= ~outlier_positions(norms, m, cfg.max_norm_ratio)
        excluded = ~m  # special or outlier
        over = m & (torch.cumsum(m.flatten().long(), 0).view_as(m) > self.remaining)  # the budget, after outliers
        if bool(over.any()):  # contexts after the cut's last row are not stored: nothing of theirs is counted
            self.cut = True
            m &= ~over
            excluded[int(m.any(dim=1).nonzero().max()) + 1 :] = False
        self.stats["rows"] += int(m.sum())
        self.stats["sum_norm"] += float(norms[m].sum())
        self.stats["excluded_positions"] += int(excluded.sum())
        self.stats["excluded_sum_norm"] += float(norms[excluded].sum())
        self.acts.append(resid[m].to(DTYPES[cfg.dtype]))
        self.remaining -= int(m.sum())

    def tensors(self, tokens: torch.Tensor, heldout: list[bool], d_model: int, dtype: str) -> dict[str, torch.Tensor]:
        mask = self.mask
        n_ctx = int(mask.any(dim=1).nonzero().max()) + 1 if bool(mask.any()) else 0
        return {
            "acts": torch.cat(self.acts) if self.acts else torch.zeros(0, d_model, dtype=DTYPES[dtype]),
            "tokens": tokens[:n_ctx].to(torch.int32),
            "mask": mask[:n_ctx].to(torch.uint8),
            "heldout": torch.tensor(heldout, dtype=torch.uint8)[:n_ctx],
        }


ShardPart = tuple[dict[str, torch.Tensor], dict[str, Any], bool]
"""One layer's shard: its tensors, its statistics, and whether the budget cut it short (partial)."""


def shard_tensors(model: LanguageModel, layers: list[int], ctxs: list[list[int]], budgets: list[int],
                  cfg: HarvestConfig, special: torch.Tensor, heldout: list[bool]) -> list[ShardPart]:
    """Run the model over one shard's contexts (`heldout` flags each) and make each of `layers`' shard: at most
    its `budgets` entry of positions that are neither special nor outliers (`featurescope.outliers`). Each
    forward pass stops after the deepest layer that still needs rows; each layer's shard is the one a harvest of
    that layer alone writes."""
    tokens = torch.tensor(ctxs, dtype=torch.long)
    mask = ~torch.isin(tokens, special)  # becomes the stored mask: which positions are rows
    parts = [_LayerRows(mask.clone(), budget) for budget in budgets]
    for s in range(0, len(ctxs), cfg.batch_size):
        live = [k for k, part in enumerate(parts) if part.close_if_spent(s)]
        if not live:
            break
        resids = model.residuals(tokens[s : s + cfg.batch_size], [layers[k] for k in live])
        for k in live:
            parts[k].add(resids[layers[k]].float().cpu(), s, cfg)
    return [(p.tensors(tokens, heldout, model.d_model, cfg.dtype), p.stats, p.cut) for p in parts]
