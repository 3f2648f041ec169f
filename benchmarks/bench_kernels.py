"""Where the time of one TopK training step goes, part by part, and the decoder-gradient kernels compared.

    python benchmarks/bench_kernels.py --device cuda --out benchmarks/results/kernels_gpu.json

For each width: the selection matmul (bf16, the roofline of the step), `topk_rows`, the gathered encoder dot
(`sparse_dot`) and decoder sum (`sparse_sum`) forward and backward, one whole optimiser step of `TopKSAE`, and
the same step done densely (dense pre-activations with autograd, top-k mask, dense decoder) as the baseline.
Three ways to accumulate the decoder's weight gradient Σ_e g[e]·x[rows[e]] into row cols[e] are timed:
`index_add_` of the materialised [entries, d] products, a sparse COO × dense product, and a CSR × dense
product (cuSPARSE on a GPU). Times are medians of CUDA-synchronised repeats, in milliseconds.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from featurescope.atomic import write_json
from featurescope.sae import SAE, SAEConfig
from featurescope.sae.kernels import Pattern, _coo_t, _csr_t, select_scores, sparse_dot, sparse_sum, topk_rows


def timed(fn: Callable[[], Any], device: torch.device, reps: int) -> float:
    """Median milliseconds of `fn` over `reps` runs after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def grad_index_add(p: Pattern, g: torch.Tensor, x: torch.Tensor, n_cols: int) -> torch.Tensor:
    """The [entries, d] products, materialised and added into their rows."""
    out = torch.zeros(n_cols, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add_(0, p.cols, g[:, None] * x[p.rows])


def grad_coo(p: Pattern, g: torch.Tensor, x: torch.Tensor, n_cols: int) -> torch.Tensor:
    return torch.sparse.mm(_coo_t(p, g, n_cols), x)


def grad_csr(p: Pattern, g: torch.Tensor, x: torch.Tensor, n_cols: int) -> torch.Tensor:
    return _csr_t(p, g, n_cols) @ x


GRADS = {"index_add": grad_index_add, "coo": grad_coo, "csr": grad_csr}


def width(device: torch.device, n: int, d: int, m: int, k: int, reps: int) -> dict[str, Any]:
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, d, device=device, generator=g)
    sae = SAE.create(SAEConfig(d_in=d, d_sae=m, architecture="topk", k=k), seed=0).to(device)
    W, b = sae.W_enc_rows.detach(), sae.b_enc.detach()
    buf = torch.empty(n, m, dtype=torch.bfloat16, device=device)
    scores = select_scores(x, W, b, buf)
    idx = topk_rows(scores, k)
    p = Pattern.from_topk(idx)
    r: dict[str, Any] = {"n": n, "d": d, "features": m, "k": k}
    r["select_matmul_bf16_ms"] = timed(lambda: select_scores(x, W, b, buf), device, reps)
    r["topk_rows_ms"] = timed(lambda: topk_rows(scores, k), device, reps)
    r["torch_topk_ms"] = timed(lambda: scores.topk(k, dim=-1, sorted=False), device, reps)
    Wg = W.clone().requires_grad_()
    vals = sparse_dot(x, W, b, p)
    r["sparse_dot_fwd_ms"] = timed(lambda: sparse_dot(x, W, b, p), device, reps)
    r["sparse_sum_fwd_ms"] = timed(lambda: sparse_sum(vals, W, p), device, reps)

    def dot_fb() -> None:
        sparse_dot(x, Wg, b, p).sum().backward()

    def sum_fb() -> None:
        sparse_sum(vals.detach().requires_grad_(), Wg, p).sum().backward()

    r["sparse_dot_fwd_bwd_ms"] = timed(dot_fb, device, reps)
    r["sparse_sum_fwd_bwd_ms"] = timed(sum_fb, device, reps)
    ge = torch.randn(p.cols.numel(), device=device, generator=g)
    ref = grad_index_add(p, ge, x, m)
    for name, fn in GRADS.items():
        err = float((fn(p, ge, x, m) - ref).abs().max() / ref.abs().max())
        r[f"weight_grad_{name}_ms"] = timed(lambda fn=fn: fn(p, ge, x, m), device, reps)
        r[f"weight_grad_{name}_rel_err"] = err

    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    sae.train()

    def step() -> None:
        out = sae.training_loss(x, 0.5)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.before_step()
        opt.step()
        sae.after_step()

    Wd = sae.W_dec.detach().clone().requires_grad_()
    We = W.clone().requires_grad_()
    opt_dense = torch.optim.Adam([Wd, We], lr=1e-4)

    def dense_step() -> None:
        pre = x @ We.T + b
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        loss = (f @ Wd - x).pow(2).sum(-1).mean()
        opt_dense.zero_grad(set_to_none=True)
        loss.backward()
        opt_dense.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    r["train_step_ms"] = timed(step, device, reps)
    if device.type == "cuda":
        r["train_step_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    r["dense_step_ms"] = timed(dense_step, device, reps)
    if device.type == "cuda":
        r["dense_step_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    r["train_samples_per_second"] = n / r["train_step_ms"] * 1e3
    r["step_over_select_matmul"] = r["train_step_ms"] / r["select_matmul_bf16_ms"]
    r["dense_over_ours"] = r["dense_step_ms"] / r["train_step_ms"]
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results/kernels.json")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--d", type=int, default=640)
    p.add_argument("--widths", default="16384,65536", help="comma-separated feature counts")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_kernels.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                    for k, v in vars(args).items()),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
        "widths": [],
    }
    for m in (int(w) for w in args.widths.split(",")):
        r = width(device, args.batch_size, args.d, m, args.k, args.reps)
        results["widths"].append(r)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
