"""Benchmark TopK SAE training: featurescope vs SAELens vs EleutherAI sparsify vs the matmul roofline.

    python benchmarks/bench_train.py --out benchmarks/results/train.json

Synthetic data with known features (featurescope.synthetic: 1M × 256 rows from 2,048 true features by
default, plus 65,536 held-out rows), one epoch of TopK (k 8, 2,048 latents, batch 4,096) for every
trainer, all on the same rows and the same learning rate (ours by default). Peers run as subprocesses of
the interpreter in --peer-python (a venv with sae-lens and eai-sparsify); see benchmarks/peer_runner.py.
The rows are written twice: as an activation store laid out as `harvest` writes one (float32; its "train"
split is the training rows, its "heldout" split the held-out ones) and as .npy files for the peers.
Reported per trainer: samples/s of the training call (wall time; its CPU time too, steadier when other
processes share the CPU), the whole process (`featurescope train` on the store as a user runs it, from the
interpreter's start to its exit; a peer's process up to its saved weights, reading the .npy included), FVU
(around the mean, raw units) and L0 on the
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

from featurescope.activations import DTYPES, MANIFEST, STORE_FORMAT, STORE_VERSION, ActivationStore, shard_name
from featurescope.atomic import atomic_path, write_json, write_safetensors
from featurescope.sae import SAE, TopKSAE
from featurescope.synthetic import make_synthetic, recovery
from featurescope.train import TrainConfig, train
from featurescope.train.setup import default_dead_tokens

REPO = Path(__file__).resolve().parents[1]


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_store(path: Path, train_rows: torch.Tensor, heldout_rows: torch.Tensor, *, dtype: str = "float32",
                ctx_len: int = 128, shard_contexts: int = 512) -> None:
    """An activation store as `harvest` lays one out (docs/formats/activation-store.md): contexts of `ctx_len`
    positions whose first (BOS) is not a row, `shard_contexts` per shard, the held-out contexts spread evenly
    among the others; its "train" split is exactly `train_rows`, its "heldout" split `heldout_rows`."""
    per = ctx_len - 1
    parts = [train_rows.to(DTYPES[dtype]), heldout_rows.to(DTYPES[dtype])]
    n_ctx = [-(-len(p) // per) for p in parts]
    total = sum(n_ctx)
    held = np.zeros(total, dtype=bool)
    held[np.round(np.arange(n_ctx[1]) * (total / max(n_ctx[1], 1))).astype(np.int64)] = True
    next_row = [0, 0]
    path.mkdir(parents=True)
    shards = []
    for i, s in enumerate(range(0, total, shard_contexts)):
        flags = held[s : s + shard_contexts]
        mask = torch.zeros(len(flags), ctx_len, dtype=torch.uint8)
        acts = []
        for c, h in enumerate(flags):
            src = parts[int(h)]
            lo = next_row[int(h)]
            hi = min(lo + per, len(src))
            acts.append(src[lo:hi])
            mask[c, 1 : 1 + hi - lo] = 1
            next_row[int(h)] = hi
        tokens = torch.arange(len(flags) * ctx_len, dtype=torch.int32).view(len(flags), ctx_len) % 30000 + 3
        tokens[:, 0] = 2
        tensors = {"acts": torch.cat(acts), "tokens": tokens, "mask": mask,
                   "heldout": torch.from_numpy(flags.astype(np.uint8))}
        write_safetensors(path / shard_name(i), tensors, metadata={"format": STORE_FORMAT})
        shards.append({"file": shard_name(i), "rows": len(tensors["acts"]), "contexts": len(flags),
                       "bytes": (path / shard_name(i)).stat().st_size, "partial": False,
                       "heldout_contexts": int(flags.sum()), "heldout_rows": int(mask[torch.from_numpy(flags)].sum())})
    write_json(path / MANIFEST, {"format": STORE_FORMAT, "version": STORE_VERSION, "model": "synthetic", "layer": 0,
                                 "d_model": train_rows.shape[1], "dtype": dtype, "ctx_len": ctx_len,
                                 "corpus": "synthetic", "complete": True, "heldout": n_ctx[1] / total,
                                 "shards": shards})


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


def run_process(name: str, src: Path, store: Path, work: Path, args: argparse.Namespace, lr: float,
                heldout: torch.Tensor, true: torch.Tensor) -> dict[str, Any]:
    """`featurescope train` on the store in a fresh interpreter (the package from `src`), timed from start to exit."""
    out = work / name
    cmd = [sys.executable, "-m", "featurescope", "-q", "train", "--activations", str(store), "--out", str(out),
           "--features", str(args.features), "--k", str(args.k), "--batch-size", str(args.batch_size),
           "--epochs", str(args.epochs), "--lr", repr(lr), "--seed", str(args.seed), "--device", args.device]
    env = {**os.environ, "PYTHONPATH": str(src)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    before = load()
    t = time.perf_counter()
    usage = os.times()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    after = os.times()
    if proc.returncode != 0:
        return {"trainer": name, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    summary = json.loads((out / "training_summary.json").read_text())
    sae = SAE.load(out)
    samples = summary["steps"] * args.batch_size
    return {"trainer": name, "src": str(src), "lr": lr, "process_seconds": wall,
            "process_cpu_seconds": (after.children_user + after.children_system) - (usage.children_user
                                                                                    + usage.children_system),
            "loop_seconds": summary["seconds"], "samples": samples, "samples_per_second": samples / wall,
            "load_before": before, "load_after": load(), **heldout_quality(sae, heldout),
            **recovery(sae.W_dec, true, assign=not args.no_hungarian)._asdict()}


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
    usage = os.times()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    after = os.times()
    if proc.returncode != 0:
        return {"trainer": lib, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    res = json.loads(out.read_text())
    rec = recovery(torch.from_numpy(np.load(w_dec)), true, assign=not args.no_hungarian)
    return {"trainer": lib, "lr": lr, **res, "subprocess_seconds": wall,
            "process_seconds": wall - res["after_training_seconds"],  # to the saved weights
            "subprocess_cpu_seconds": (after.children_user + after.children_system) - (usage.children_user
                                                                                      + usage.children_system),
            "load_before": before,
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
    p.add_argument("--no-fit", action="store_true", help="skip our in-process runs (whole processes only)")
    p.add_argument("--src", action="append", default=[], metavar="NAME=PATH",
                   help="also time the whole process of another featurescope tree's src/ folder, e.g. "
                        "before=/tmp/old/src (repeatable)")
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
        data, held, store = work / "train.npy", work / "heldout.npy", work / "store"
        save_npy(data, syn.data[: args.rows].numpy())
        save_npy(held, heldout.numpy())
        write_store(store, syn.data[: args.rows], heldout)
        assert ActivationStore(store, "train").n_rows == args.rows
        runs = [("featurescope", "bfloat16")] + ([] if args.no_fp32_select else [("featurescope-fp32-select",
                                                                                  "float32")])
        for name, sel in [] if args.no_fit else runs:
            r = run_ours(name, store, work, args, lr, heldout, syn.true_features, sel)
            results["trainers"].append(r)
            print(json.dumps(r), flush=True)
        for name, src in [("featurescope-process", str(REPO / "src")), *(x.split("=", 1) for x in args.src)]:
            r = run_process(name if name.startswith("featurescope") else f"featurescope-{name}", Path(src), store,
                            work, args, lr, heldout, syn.true_features)
            results["trainers"].append(r)
            print(json.dumps(r), flush=True)
        peer_lr = {k: float(v) for k, v in (item.split("=", 1) for item in args.peer_lr)}
        for lib in [x for x in args.peers.split(",") if x]:
            r = run_peer(lib, data, held, work, args, peer_lr.get(lib, lr), dead_window, syn.true_features)
            results["trainers"].append(r)
            print(json.dumps(r), flush=True)
    write_json(args.out, results)
    print(f"\n{'trainer':26} {'samples/s':>10} {'fit s':>7} {'CPU s':>7} {'process s':>9} {'FVU':>7} {'L0':>6} "
          f"{'hungarian':>9} {'max cos':>8}")
    for r in results["trainers"]:
        if "error" in r:
            print(f"{r['trainer']:26} error: {r['error']}")
            continue
        fit, cpu = r.get("fit_seconds", r.get("loop_seconds", math.nan)), r.get("fit_cpu_seconds", math.nan)
        print(f"{r['trainer']:26} {r['samples_per_second']:10.0f} {fit:7.1f} {cpu:7.1f} "
              f"{r.get('process_seconds', math.nan):9.1f} {r['fvu']:7.4f} {r['l0']:6.2f} {r['hungarian']:9.4f} "
              f"{r['true_max_cos']:8.4f}")
    roof = results["roofline"]
    print(f"{'roofline fp32 matmul':26} {roof['roofline_fp32_samples_per_second']:10.0f}")
    print(f"{'roofline bf16 matmul':26} {roof['roofline_bf16_samples_per_second']:10.0f}")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
