"""Dead and dense features of trained SAEs, counted on rows of an activation store.

    python benchmarks/bench_demo_sae.py runs/demo/acts runs/demo/sae [more SAE folders] \
        [--rows 100000] [--split heldout] [--out benchmarks/results/demo_sae.json]

For each SAE: the fraction of features that fire on none of the sampled rows (dead), the number and fraction
firing on more than 10 % of them (dense, the issue's bound), the largest and the median per-feature maximum
(over features that fire), and FVU around the mean on the same rows. `--split heldout` counts on the store's
held-out documents only (rows no SAE trained on); `all` samples the whole store (more rows, as BENCHMARKS.md's
demo table does).
"""

from __future__ import annotations

import argparse
import platform

import torch

from featurescope.activations import open_source
from featurescope.atomic import write_json
from featurescope.evaluate import reconstruction_metrics
from featurescope.sae import SAE

DENSE = 0.1


@torch.inference_mode()
def count(sae: SAE, x: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """Dead / dense counts and per-feature maxima of `sae` over rows `x`."""
    fired = torch.zeros(sae.d_sae)
    peak = torch.zeros(sae.d_sae)
    for s in range(0, len(x), batch):
        f = sae.encode(x[s : s + batch])
        fired += (f > 0).sum(0).float()
        peak = torch.maximum(peak, f.max(0).values)
    density = fired / len(x)
    alive = fired > 0
    return {
        "rows": len(x), "dead_fraction": float((~alive).float().mean()),
        "dense": int((density > DENSE).sum()), "dense_fraction": float((density > DENSE).float().mean()),
        "largest_max": float(peak.max()), "median_max": float(peak[alive].median()) if alive.any() else 0.0,
        "fvu": reconstruction_metrics(sae, x).fvu,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("saes", nargs="+")
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--split", default="all", choices=("all", "train", "heldout"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/demo_sae.json")
    args = p.parse_args()
    x = open_source(args.store, split=args.split).sample(args.rows, seed=args.seed)
    results = {}
    for path in args.saes:
        results[path] = r = count(SAE.load(path), x)
        print(f"{path}: dead {r['dead_fraction']:.2%}, dense {r['dense']} ({r['dense_fraction']:.2%}), "
              f"max {r['largest_max']:.1f} / median {r['median_max']:.2f}, FVU {r['fvu']:.3f} on {r['rows']:,} "
              f"{args.split} rows")
    write_json(args.out, {"machine": platform.processor() or platform.machine(), "store": args.store,
                          "split": args.split, "results": results})


if __name__ == "__main__":
    main()
