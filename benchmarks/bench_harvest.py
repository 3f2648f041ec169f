"""Harvest throughput as a ratio of a bare stop-at-layer forward pass over the same contexts, same process.

    python benchmarks/bench_harvest.py [--contexts 96] [--model default] [--layer 9] [--out FILE.json]
    python benchmarks/bench_harvest.py --layers 3,9,15 [--contexts 96]

The baseline runs `LanguageModel.residual` on the same token batches and does nothing else; the harvest
also tokenises the corpus, masks special positions, converts to bf16, writes shards and the manifest.
With `--layers`, it times instead a harvest of those layers (one forward pass each batch, one store per
layer) against a harvest of the deepest alone, the same rows per layer, alternating in one process
(default output benchmarks/results/harvest_layers.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from featurescope.corpus import contexts, open_corpus
from featurescope.harvest import HarvestConfig, harvest
from featurescope.models import LanguageModel, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--corpus", default="wiki-en")
    parser.add_argument("--contexts", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model-dtype", default="auto")
    parser.add_argument("--layers", default="", help="several layers, such as 3,9,15: time them against the deepest")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    model = load_model(args.model, device="auto", dtype=args.model_dtype)
    ids = torch.tensor(list(itertools.islice(
        contexts(open_corpus(args.corpus), model.tokenizer, ctx_len=128, bos_id=model.bos_id), args.contexts)))
    special = torch.tensor(sorted(model.special_ids))
    rows = int((~torch.isin(ids, special)).sum())
    if args.layers:
        return _write(_layers(args, model, rows, len(ids)), args.out or "benchmarks/results/harvest_layers.json")
    model.residual(ids[: args.batch_size], args.layer)  # warm-up

    bare, full = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for s in range(0, len(ids), args.batch_size):
            model.residual(ids[s : s + args.batch_size], args.layer)
        bare.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = HarvestConfig(out=str(Path(tmp) / "acts"), model=args.model, layer=args.layer, corpus=args.corpus,
                                tokens=rows, batch_size=args.batch_size, shard_contexts=32)
            start = time.perf_counter()
            harvest(cfg, model=model, progress=False)
            full.append(time.perf_counter() - start)
    result = {
        **_machine(model), "model": args.model, "layer": args.layer,
        "contexts": len(ids), "rows": rows,
        "bare_forward_tokens_per_s": rows / min(bare), "harvest_tokens_per_s": rows / min(full),
        "harvest_over_bare": min(bare) / min(full),
    }
    _write(result, args.out or "benchmarks/results/harvest.json")


def _machine(model: LanguageModel) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    return {"machine": f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}", "device": str(model.device),
            "model_dtype": str(model.dtype)}


def _layers(args: argparse.Namespace, model: LanguageModel, rows: int, n_contexts: int) -> dict[str, Any]:
    """Seconds of a harvest of `args.layers` and of one of the deepest alone (best of `repeats`, alternating)."""
    layers = sorted(int(x) for x in args.layers.split(","))
    model.residual(torch.tensor([[model.bos_id or 0] * 128] * args.batch_size), layers[-1])  # warm-up
    times: dict[str, list[float]] = {"one": [], "several": []}
    for _ in range(args.repeats):
        for kind, layer in (("one", str(layers[-1])), ("several", ",".join(map(str, layers)))):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = HarvestConfig(out=str(Path(tmp) / "acts"), model=args.model, layer=layer, corpus=args.corpus,
                                    tokens=rows, batch_size=args.batch_size, shard_contexts=32)
                start = time.perf_counter()
                harvest(cfg, model=model, progress=False)
                times[kind].append(time.perf_counter() - start)
    one, several = min(times["one"]), min(times["several"])
    return {**_machine(model), "model": args.model, "layers": layers, "contexts": n_contexts, "rows_per_layer": rows,
            "repeats": args.repeats, "one_layer_seconds": one, "several_layers_seconds": several,
            "several_over_one": several / one, "one_layer_runs": times["one"], "several_layers_runs": times["several"]}


def _write(result: dict[str, Any], path: str) -> None:
    print(json.dumps(result, indent=2))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
