"""The offline suite (`featurescope eval --suite`) on a trained SAE and on an untrained one of the same shape,
same process, same texts: its figures and how long it takes.

    python benchmarks/bench_suite.py [--run runs/demo] [--out FILE.json]

`seconds` is the suite alone (model loaded before); `process_seconds` the whole script up to that SAE's end.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from featurescope.atomic import write_json
from featurescope.evalsuite.suite import run_suite
from featurescope.models import load_model
from featurescope.sae import SAE


def main() -> None:
    start = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a demo-style run folder holding sae/")
    parser.add_argument("--out", default="benchmarks/results/suite.json")
    args = parser.parse_args()
    trained = SAE.load(Path(args.run) / "sae").eval()
    untrained = SAE.create(trained.cfg).eval()
    model = load_model(str(trained.cfg.model or "default"))
    rows = {}
    for name, sae in (("trained", trained), ("untrained", untrained)):
        r = run_suite(model, sae, int(trained.cfg.layer or 0))
        rows[name] = {"sparse_probing": r["sparse_probing"]["eval_result_metrics"],
                      "details": {d["dataset_name"]: {k: v for k, v in d.items() if k.endswith("accuracy")}
                                  for d in r["sparse_probing"]["eval_result_details"]},
                      "causal": r["causal_language"]["eval_result_metrics"]["causal"],
                      "absorption": r["absorption_first_letter"]["eval_result_metrics"]["mean"],
                      "absorption_seconds": r["absorption_first_letter"]["seconds"],
                      "autointerp": r["autointerp"].get("skipped") or r["autointerp"].get("eval_result_metrics"),
                      "seconds": r["seconds"], "process_seconds": round(time.perf_counter() - start, 1)}
        print(name, rows[name], flush=True)
    write_json(args.out, {"command": f"python benchmarks/bench_suite.py --run {args.run} --out {args.out}",
                          "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                      "torch": torch.__version__},
                          "sae": str(Path(args.run) / "sae"), "results": rows})


if __name__ == "__main__":
    main()
