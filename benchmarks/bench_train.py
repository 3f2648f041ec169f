"""Benchmark TopK SAE training: featurescope vs SAELens vs EleutherAI sparsify vs the matmul roofline.

    python benchmarks/bench_train.py --out benchmarks/results/train.json

Synthetic data with known features (featurescope.synthetic: 1M × 256 rows from 2,048 true features by
default, plus 65,536 held-out rows), one epoch of TopK (k 8, 2,048 latents, batch 4,096) for every
trainer, all on the same rows and the same learning rate (ours by default). Peers run as subprocesses of
the interpreter in --peer-python (a venv with sae-lens and eai-sparsify); see benchmarks/peer_runner.py.
Reported per trainer: samples/s of the training call (wall time; its CPU time too, steadier when other
processes share the CPU), FVU (around the mean, raw units) and L0 on the
held-out rows, and recovery of the true features by the decoder rows (Hungarian-matched mean cosine and
mean max cosine). The roofline is the time of the encoder's dense matmul alone ([batch, d] @ [d, latents],
fp32 and bf16): a trainer that did nothing else per step would reach batch / that time samples/s.
On a GPU (`--device cuda`) every trainer runs there and the peak GPU memory of each is recorded, e.g. the
Gemma 3 270M width: `--device cuda --d 640 --true-features 16384 --features 16384 --k 32`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featurescope.activations import NpySource
from featurescope.atomic import atomic_path, write_json
from featurescope.sae import TopKSAE
from featurescope.synthetic import make_synthetic, recovery
from featurescope.train import TrainConfig, train
from featurescope.train.setup import default_dead_tokens

REPO = Path(__file__).resolve().parents[1]


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def sync(device: str) -> None:
    """Wait for the GPU's queued work (timings on CUDA are asynchronous)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def roofline(batch: int, d: int, m: int, device: str, reps: int = 20) -> dict[str, float]:
    """Median time of the encoder matmul, fp32 and bf16, as samples/s."""
    out: dict[str, float] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = torch.randn(batch, d, dtype=dtype, device=device)
        w = torch.randn(m, d, dtype=dtype, device=device)
        times = []
        for _ in range(reps + 3):
            sync(device)
            t = time.perf_counter()
            x @ w.T
            sync(device)
            times.append(time.perf_counter() - t)
        sec = float(np.median(times[3:]))
        out[f"matmul_{name}_ms"] = 1e3 * sec
        out[f"matmul_{name}_gflops"] = 2 * batch * d * m / sec / 1e9
        out[f"roofline_{name}_samples_per_second"] = batch / sec
    return out


@torch.no_grad()
def heldout_quality(sae: Any, x: torch.Tensor) -> dict[str, float]:
    err = var = l0 = 0.0
    mean = x.mean(0)
    for s in range(0, x.shape[0], 4096):
        xb = x[s : s + 4096]
        f = sae.encode(xb)
        err += float((sae.decode(f) - xb).double().pow(2).sum())
        var += float((xb - mean).double().pow(2).sum())
        l0 += float((f != 0).sum())
    return {"fvu": err / var, "l0": l0 / x.shape[0]}


def load() -> list[float]:
    """The machine's load averages: other processes on a shared CPU skew timings."""
    return [round(v, 2) for v in os.getloadavg()]


def run_ours(name: str, data: Path, work: Path, args: argparse.Namespace, lr: float, heldout: torch.Tensor,
             true: torch.Tensor, select_dtype: str) -> dict[str, Any]:
    cfg = TrainConfig(activations=str(data), out=str(work / name), arch="topk", features=args.features, k=args.k,
                      batch_size=args.batch_size, epochs=args.epochs, lr=lr, seed=args.seed,
                      select_dtype=select_dtype, device=args.device)
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = load()
    t, cpu = time.perf_counter(), time.process_time()
    result = train(cfg, progress=False)
    sync(args.device)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    memory = {"peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20} if cuda else {}
    samples = result.steps * args.batch_size
    rec = recovery(result.sae.W_dec, true, assign=not args.no_hungarian)
    return {"trainer": name, "lr": lr, "fit_seconds": seconds, "fit_cpu_seconds": cpu_seconds,
            "loop_seconds": result.seconds, "samples": samples, "samples_per_second": samples / seconds,
            "load_before": before, "load_after": load(), "device": args.device, **memory,
            **heldout_quality(result.sae, heldout), **rec._asdict()}


def run_peer(lib: str, data: Path, heldout: Path, work: Path, args: argparse.Namespace, lr: float,
             dead_window: int, true: torch.Tensor) -> dict[str, Any]:
    out, w_dec = work / f"{lib}.json", work / f"{lib}_w_dec.npy"
    cmd = [args.peer_python, str(REPO / "benchmarks" / "peer_runner.py"), lib, "--data", str(data),
           "--heldout", str(heldout), "--k", str(args.k), "--features", str(args.features),
           "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--lr", repr(lr),
           "--dead-window", str(dead_window), "--seed", str(args.seed), "--out", str(out), "--w-dec", str(w_dec)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--device", args.device]
    before = load()
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"trainer": lib, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    res = json.loads(out.read_text())
    rec = recovery(torch.from_numpy(np.load(w_dec)), true, assign=not args.no_hungarian)
    return {"trainer": lib, "lr": lr, **res, "subprocess_seconds": wall, "load_before": before,
            "load_after": load(), **rec._asdict()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/train.json", help="JSON file for the results")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--heldout", type=int, default=65536)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--true-features", type=int, default=2048)
    p.add_argument("--features", type=int, default=2048)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=None, help="for every trainer (default: featurescope's)")
    p.add_argument("--peer-lr", action="append", default=[], metavar="LIB=LR",
                   help="another learning rate for one peer, e.g. saelens=1e-2 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peers", default="saelens,sparsify", help="comma-separated; empty for none")
    p.add_argument("--peer-python", default=str(REPO / ".venv-peers" / "bin" / "python"))
    p.add_argument("--no-fp32-select", action="store_true", help="skip our run with fp32 selection")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every trainer (default: torch's; 1 is steadier on a busy machine)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (every trainer, the roofline too)")
    p.add_argument("--no-hungarian", action="store_true",
                   help="skip the optimal feature matching (minutes at 16k features and more); max cosines only")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lr = args.lr or TopKSAE.default_lr(args.features)
    steps = math.ceil(args.rows / args.batch_size) * args.epochs
    dead_window = math.ceil(default_dead_tokens(steps * args.batch_size, args.batch_size) / args.batch_size)
    t = time.perf_counter()
    syn = make_synthetic(args.rows + args.heldout, args.d, args.true_features, seed=args.seed)
    gen_seconds = time.perf_counter() - t
    heldout = syn.data[args.rows :].clone()
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
                    "gpu": torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else None},
        "settings": {"rows": args.rows, "heldout": args.heldout, "d": args.d, "true_features": args.true_features,
                     "features": args.features, "k": args.k, "batch_size": args.batch_size, "epochs": args.epochs,
                     "lr": lr, "dead_window_steps": dead_window, "seed": args.seed},
        "synthetic_seconds": gen_seconds,
        "roofline": roofline(args.batch_size, args.d, args.features, args.device),
        "trainers": [],
    }
    print(json.dumps(results["roofline"], indent=1), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        data, held = work / "train.npy", work / "heldout.npy"
        save_npy(data, syn.data[: args.rows].numpy())
        save_npy(held, heldout.numpy())
        assert NpySource(data).n_rows == args.rows
        runs = [("featurescope", "bfloat16")] + ([] if args.no_fp32_select else [("featurescope-fp32-select",
                                                                                  "float32")])
        for name, sel in runs:
            r = run_ours(name, data, work, args, lr, heldout, syn.true_features, sel)
            results["trainers"].append(r)
            print(json.dumps(r), flush=True)
        peer_lr = {k: float(v) for k, v in (item.split("=", 1) for item in args.peer_lr)}
        for lib in [x for x in args.peers.split(",") if x]:
            r = run_peer(lib, data, held, work, args, peer_lr.get(lib, lr), dead_window, syn.true_features)
            results["trainers"].append(r)
            print(json.dumps(r), flush=True)
    write_json(args.out, results)
    print(f"\n{'trainer':26} {'samples/s':>10} {'fit s':>7} {'CPU s':>7} {'FVU':>7} {'L0':>6} {'hungarian':>9} "
          f"{'max cos':>8}")
    for r in results["trainers"]:
        if "error" in r:
            print(f"{r['trainer']:26} error: {r['error']}")
            continue
        print(f"{r['trainer']:26} {r['samples_per_second']:10.0f} {r['fit_seconds']:7.1f} {r['fit_cpu_seconds']:7.1f} "
              f"{r['fvu']:7.4f} {r['l0']:6.2f} {r['hungarian']:9.4f} {r['true_max_cos']:8.4f}")
    roof = results["roofline"]
    print(f"{'roofline fp32 matmul':26} {roof['roofline_fp32_samples_per_second']:10.0f}")
    print(f"{'roofline bf16 matmul':26} {roof['roofline_bf16_samples_per_second']:10.0f}")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
