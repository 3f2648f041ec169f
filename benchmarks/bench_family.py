"""Benchmark a family of SAEs trained in one pass against the same SAEs trained one after another.

    python benchmarks/bench_family.py --out benchmarks/results/family.json

Synthetic data with known features (featurescope.synthetic, 131,072 × 256 rows from 2,048 true features by
default) in a .npy file, so that every run reads it from disk as `featurescope train` does. TopK at 2,048
latents, k 8, 16 and 32 (`--k`), batch 4,096, one epoch: first each k alone (`train`), then the three as one
family (`train_family`), in the same process, `--repeats` times alternating; the ratio is the family's time
over the sum of the separate runs' (wall and CPU time, the median over the repeats). Each member's weights are
compared with its run alone (they should be identical: same seed, same batches). The time of one pass
that only reads the batches (`read_pass_*`) is what the family saves per member beyond the first.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featurescope.activations import open_source
from featurescope.atomic import atomic_path, write_json
from featurescope.synthetic import make_synthetic
from featurescope.train import TrainConfig, train
from featurescope.train.family import members, train_family


def timed(fn: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds) of `fn()`."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/family.json", help="JSON file for the results")
    p.add_argument("--rows", type=int, default=131_072)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--true-features", type=int, default=2048)
    p.add_argument("--features", type=int, default=2048)
    p.add_argument("--k", default="8,16,32", help="comma-separated: the family's members")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="alone-then-family rounds (the median is reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.k.split(",")]
    syn = make_synthetic(args.rows, args.d, args.true_features, seed=0)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-family-") as tmp:
        work = Path(tmp)
        data = work / "train.npy"
        with atomic_path(data) as t, open(t, "wb") as f:
            np.save(f, syn.data.numpy())
        base = TrainConfig(activations=str(data), out="", arch="topk", features=args.features,
                           batch_size=args.batch_size, epochs=args.epochs, device=args.device,
                           checkpoint_seconds=0.0)
        fam = members(base, {"k": ks})
        source = open_source(data, split="train")
        _, read_wall, read_cpu = timed(lambda: sum(len(b) for e in range(args.epochs) for b in source.batches(
            args.batch_size, seed=base.seed, epoch=e, device=args.device)))
        print(f"reading the batches alone: {read_wall:.1f} s wall, {read_cpu:.1f} s CPU", flush=True)
        train(dataclasses.replace(base, out=str(work / "warmup"), k=ks[0], max_rows=4 * args.batch_size),
              progress=False)  # one-time imports and allocations out of the timings
        for r in range(args.repeats):
            alone: dict[str, Any] = {}
            for m in fam:
                cfg = dataclasses.replace(base, out=str(work / f"alone{r}" / m.name), **m.settings)
                res, wall, cpu = timed(lambda cfg=cfg: train(cfg, progress=False))
                alone[m.name] = {"wall_seconds": wall, "cpu_seconds": cpu, "fvu": res.metrics["fvu"], "sae": res.sae}
                print(f"round {r}: {m.name} alone {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
            cfg = dataclasses.replace(base, out=str(work / f"family{r}"))
            res, wall, cpu = timed(lambda cfg=cfg: train_family(cfg, fam, progress=False))
            print(f"round {r}: family {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
            identical = all(torch.equal(res.members[n].sae.W_dec, a["sae"].W_dec) for n, a in alone.items())
            sum_wall = sum(a["wall_seconds"] for a in alone.values())
            sum_cpu = sum(a["cpu_seconds"] for a in alone.values())
            rounds.append({
                "alone": {n: {k: v for k, v in a.items() if k != "sae"} for n, a in alone.items()},
                "alone_sum_wall_seconds": sum_wall, "alone_sum_cpu_seconds": sum_cpu,
                "family_wall_seconds": wall, "family_cpu_seconds": cpu, "family_pass_seconds": res.seconds,
                "family_fvu": {n: m.metrics["fvu"] for n, m in res.members.items()},
                "ratio_wall": wall / sum_wall, "ratio_cpu": cpu / sum_cpu, "identical_weights": identical,
                "load_after": [round(v, 2) for v in os.getloadavg()],
            })
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device},
        "settings": {"rows": args.rows, "d": args.d, "true_features": args.true_features, "features": args.features,
                     "k": ks, "batch_size": args.batch_size, "epochs": args.epochs, "repeats": args.repeats},
        "read_pass_wall_seconds": read_wall, "read_pass_cpu_seconds": read_cpu,
        "rounds": rounds,
        "ratio_wall_median": statistics.median(r["ratio_wall"] for r in rounds),
        "ratio_cpu_median": statistics.median(r["ratio_cpu"] for r in rounds),
        "identical_weights": all(r["identical_weights"] for r in rounds),
    }
    write_json(args.out, results)
    print(f"family / sum of separate runs: wall {results['ratio_wall_median']:.3f}, "
          f"CPU {results['ratio_cpu_median']:.3f}; identical weights: {results['identical_weights']}; "
          f"results: {args.out}")


if __name__ == "__main__":
    main()
