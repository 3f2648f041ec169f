"""The stores of one harvest: one per layer. A one-layer harvest writes its store into `out` itself; a harvest
of several layers writes `out/layers.json` (the index) and one whole store per layer in `out/layer-L/`.

Each layer's store is exactly the store a harvest of that layer alone writes (its shards hold the same contexts;
each stops at its own `--tokens` rows). Shards are written layer by layer, then the manifests, so a run killed
between two manifests leaves some stores one round ahead: `open_stores` trims them back to the shard count of
the unfinished stores, and the rerun harvests those shards again for every layer that still needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featurescope.activations import LAYERS_FORMAT, LAYERS_INDEX, MANIFEST, harvested_layers, layer_folder
from featurescope.atomic import write_json
from featurescope.errors import FeaturescopeError
from featurescope.harvest.writer import HarvestConfig, begin_store, clear_store, remove_strays, trim

INDEX_VERSION = 1


def store_dirs(out: Path, layers: list[int]) -> list[Path]:
    """The folder of each layer's store."""
    return [out] if len(layers) == 1 else [out / layer_folder(layer) for layer in layers]


def rows(manifest: dict[str, Any]) -> int:
    """Rows the store's manifest records."""
    return sum(int(s["rows"]) for s in manifest["shards"])


def _clear(cfg: HarvestConfig, out: Path) -> None:
    """With `overwrite`: delete the harvest in `out`, one store or several (their index last)."""
    if not cfg.overwrite:
        return
    clear_store(cfg, out)
    layers = harvested_layers(out) if out.is_dir() else None
    if layers is None:
        return
    for layer in layers:
        folder = out / layer_folder(layer)
        if folder.is_dir():
            clear_store(cfg, folder)
            if not any(folder.iterdir()):
                folder.rmdir()
    (out / LAYERS_INDEX).unlink()


def _begin_index(out: Path, layers: list[int]) -> None:
    """Check or create `out` as a harvest of `layers` (several) and write its index."""
    held = harvested_layers(out) if out.is_dir() else None
    if held is None and (out / MANIFEST).is_file():
        raise FeaturescopeError(f"{out}: holds a one-layer harvest, not layers {', '.join(map(str, layers))}; "
                                "use another `out` or `overwrite`", settings=("out", "overwrite"))
    if held is not None and held != layers:
        raise FeaturescopeError(f"{out}: holds a harvest of layers {', '.join(map(str, held))}, not "
                                f"{', '.join(map(str, layers))}; use another `out` or `overwrite`",
                                settings=("out", "overwrite"))
    if held is None and out.is_dir() and any(out.iterdir()):
        raise FeaturescopeError(f"{out}: folder is not empty and holds no activation store; choose an empty or new "
                                "`out`", settings=("out",))
    if held is None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / LAYERS_INDEX, {"format": LAYERS_FORMAT, "version": INDEX_VERSION, "layers": layers,
                                        "stores": {str(layer): layer_folder(layer) for layer in layers}})


def open_stores(cfg: HarvestConfig, out: Path, layers: list[int], fresh: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """Create or check each layer's store (after `overwrite`) and return the manifests to continue from, the
    unfinished ones at one shard count."""
    _clear(cfg, out)
    if len(layers) == 1:
        held = harvested_layers(out) if out.is_dir() else None
        if held is not None:
            raise FeaturescopeError(f"{out}: holds a harvest of layers {', '.join(map(str, held))}, not layer "
                                    f"{layers[0]} alone; use another `out` or `overwrite`",
                                    settings=("out", "overwrite"))
        return [begin_store(cfg, out, fresh[0])]
    _begin_index(out, layers)
    dirs = store_dirs(out, layers)
    manifests = [begin_store(cfg, d, f) for d, f in zip(dirs, fresh, strict=True)]
    unfinished = [len(m["shards"]) for m in manifests if rows(m) < cfg.tokens]
    if unfinished:
        n = min(unfinished)
        for d, m in zip(dirs, manifests, strict=True):
            if len(m["shards"]) > n:
                trim(m, n)
                write_json(d / MANIFEST, m)
                remove_strays(d, m)
    return manifests
