"""Benchmark distributed TopK training: 1 process vs 2 data-parallel ranks vs 2 feature-sharded ranks.

    python benchmarks/bench_distributed.py --out benchmarks/results/distributed.json

Synthetic rows (featurescope.synthetic; d_in 256 by default), TopK (k 32, batch 4,096) with 4,096 and 16,384
features. Every run is a subprocess on the same .npy: one process with all the CPU's threads, or torchrun
--standalone with 2 ranks of cpu_count / 2 threads each (gloo), as `featurescope train --distributed 2`
starts them. Reported per run: samples/s of the training loop (the training summary's tokens / seconds,
which leave out start-up, the final evaluation and the save), the whole subprocess's wall time, each rank's
peak memory (RSS on the CPU, allocated memory on CUDA) and the ratio to the 1-process run. Each mode runs
`--repeats` times, interleaved with the others; the fastest run is reported (all figures are kept). With CUDA, a GPU
section (d_in 640, 16k and 65k features, one process per GPU) runs as well; without it, the JSON says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featurescope.atomic import atomic_path, read_json, write_json
from featurescope.synthetic import make_synthetic

MODES = {"1 process": (1, False), "2 ranks DDP": (2, False), "2 ranks feature-sharded": (2, True)}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def worker(spec_file: str) -> None:
    """One rank (or the only process): train as the JSON spec says, then write this rank's figures beside it."""
    from featurescope.train import TrainConfig, train
    from featurescope.train.loop import SUMMARY_FILE

    spec = read_json(spec_file)
    run, device = Path(spec["run"]), spec["device"]
    cfg = TrainConfig(activations=spec["data"], out=str(run), arch="topk", features=spec["features"], k=spec["k"],
                      batch_size=spec["batch_size"], max_rows=spec["rows"], seed=0, device=device,
                      shard_features=spec["shard_features"], checkpoint_every=0, checkpoint_seconds=0,
                      log_every=1000)
    cuda = device != "cpu" and torch.cuda.is_available()
    result = train(cfg, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    record: dict[str, Any] = {"rank": rank, "threads": torch.get_num_threads(),
                              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        record["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if rank == 0:
        summary = read_json(run / SUMMARY_FILE)
        record.update(steps=result.steps, samples=summary["tokens"], loop_seconds=summary["seconds"],
                      fvu=summary["metrics"].get("fvu"))
    write_json(run / f"bench-rank{rank}.json", record)


def run_mode(mode: str, data: Path, work: Path, features: int, args: argparse.Namespace, device: str
             ) -> dict[str, Any]:
    """Train once in `mode` in a subprocess; its figures."""
    ranks, shard = MODES[mode]
    run = work / f"{features}-{mode.replace(' ', '-')}"
    spec = work / f"{run.name}.json"
    write_json(spec, {"data": str(data), "run": str(run), "features": features, "k": args.k,
                      "batch_size": args.batch_size, "rows": args.steps * args.batch_size, "device": device,
                      "shard_features": shard})
    script = [str(Path(__file__).resolve()), "--worker", str(spec)]  # no other flags: torchrun would parse them
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // ranks))
    if ranks == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *script]
    load_before = [round(v, 2) for v in os.getloadavg()]  # other processes on a shared CPU skew timings
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"mode": mode, "features": features, "error": proc.stderr.strip().splitlines()[-3:]}
    parts = [read_json(run / f"bench-rank{r}.json") for r in range(ranks)]
    shutil.rmtree(run)
    head = parts[0]
    return {"mode": mode, "features": features, "ranks": ranks, "threads_per_rank": head["threads"],
            "steps": head["steps"], "samples": head["samples"], "loop_seconds": head["loop_seconds"],
            "samples_per_second": head["samples"] / head["loop_seconds"], "subprocess_seconds": wall,
            "fvu": head["fvu"], "load_before": load_before,
            **{k: [p[k] for p in parts] for k in ("peak_rss_mib", "peak_cuda_mib") if k in head}}


def section(name: str, d: int, features: list[int], device: str, args: argparse.Namespace,
            max_ranks: int = 2) -> dict[str, Any]:
    """Every mode of at most `max_ranks` ranks at every width on one synthetic data set; ratios to 1 process."""
    modes = [mode for mode, (ranks, _) in MODES.items() if ranks <= max_ranks]
    rows = args.steps * args.batch_size
    syn = make_synthetic(rows, d, args.true_features, seed=0)
    tries: dict[tuple[int, str], list[dict[str, Any]]] = {(m, mode): [] for m in features for mode in modes}
    with tempfile.TemporaryDirectory(prefix="bench-dist-") as tmp:
        work = Path(tmp)
        data = work / "train.npy"
        _save_npy(data, syn.data.numpy())
        del syn
        for attempt in range(args.repeats):  # interleaved, so that a busy spell does not hit one mode only
            for (m, mode), done in tries.items():
                r = run_mode(mode, data, work / str(attempt), m, args, device)
                done.append(r)
                print(json.dumps(r), flush=True)
    runs = []
    for done in tries.values():
        ok = [r for r in done if "error" not in r]
        best = max(ok, key=lambda r: r["samples_per_second"]) if ok else done[-1]
        runs.append({**best, "samples_per_second_all": [r["samples_per_second"] for r in ok]})
    for r in runs:
        base = next((b for b in runs if b["features"] == r["features"] and b["mode"] == "1 process"), None)
        if "error" not in r and base is not None and "error" not in base:
            r["ratio_vs_1_process"] = r["samples_per_second"] / base["samples_per_second"]
    return {"section": name, "device": device, "d_in": d, "features": features, "k": args.k,
            "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats, "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/distributed.json")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--features", default="4096,16384", help="comma-separated SAE widths (CPU section)")
    p.add_argument("--gpu-features", default="16384,65536", help="comma-separated SAE widths (GPU section)")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30, help="optimiser steps per run")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode; the fastest is reported")
    p.add_argument("--true-features", type=int, default=2048)
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    p.add_argument("--worker", metavar="SPEC.json", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker)
        return

    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "note": "samples/s of the training loop; ratio_vs_1_process compares with the 1-process run of the same "
                "width on the same device",
        "sections": [],
    }
    if not args.no_cpu:
        widths = [int(v) for v in args.features.split(",")]
        results["sections"].append(section("cpu", args.d, widths, "cpu", args))
    if torch.cuda.is_available():  # 1 GPU: the 1-process run only (its speed and peak memory)
        widths = [int(v) for v in args.gpu_features.split(",")]
        results["sections"].append(section("gpu", 640, widths, "cuda", args, torch.cuda.device_count()))
    else:
        results["gpu"] = "not run: no CUDA GPU on this machine (CUDA/NCCL paths unmeasured)"
        print("GPU section not run: no CUDA GPU on this machine", flush=True)
    write_json(args.out, results)
    print(f"\n{'section':8} {'features':>8} {'mode':26} {'samples/s':>10} {'× 1 proc':>8} {'peak MiB/rank':>14}")
    for sec in results["sections"]:
        for r in sec["runs"]:
            if "error" in r:
                print(f"{sec['section']:8} {r['features']:8} {r['mode']:26} error: {r['error']}")
                continue
            peak = r.get("peak_cuda_mib") or r.get("peak_rss_mib") or [0]
            print(f"{sec['section']:8} {r['features']:8} {r['mode']:26} {r['samples_per_second']:10.0f} "
                  f"{r.get('ratio_vs_1_process') or 0:8.2f} {max(peak):14.0f}")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
