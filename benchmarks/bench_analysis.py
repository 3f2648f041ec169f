"""Analysis throughput as a ratio of bare SAE-encode throughput over the same rows, in the same process.

    python benchmarks/bench_analysis.py [--features 4096] [--k 32] [--tokens 50000] [--activations STORE]
                                        [--out benchmarks/results/analysis.json]

The baseline encodes the same activation rows (already in memory) in batches of the same size and does
nothing else. `analyze` reads the store twice (pass 1: statistics, top contexts, non-firing windows; pass 2:
histograms, quantile samples), so its passes can reach at most 0.5 of the baseline; the finishing step
(logit effects over the 262k-token vocabulary, neighbours, labels, writing the database) is timed apart.
Without --activations the rows are a synthetic store of random bfloat16 activations (the cost of encoding
does not depend on the values; a TopK SAE always has k active features per row).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import torch

from featurescope.activations import ActivationStore
from featurescope.analysis import AnalyzeConfig, analyze
from featurescope.analysis.pipeline import batch_contexts
from featurescope.atomic import write_json
from featurescope.models import load_model
from featurescope.sae import SAE, SAEConfig
from featurescope.synthetic import random_store

CTX, D = 128, 640


def encode_seconds(sae: SAE, store: ActivationStore, tokens: int, batch_rows: int) -> float:
    """Seconds to encode the first `tokens` rows, batch by batch, rows already in memory."""
    x = store.rows(0, tokens)
    sae.encode(x[:batch_rows])  # warm-up
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(x), batch_rows):
            sae.encode(x[s:s + batch_rows].to(sae.W_dec.device))
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--batch-contexts", type=int, default=None, help="default: as `analyze` chooses")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--activations", default="", help="a real activation store (default: synthetic rows)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/analysis.json")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model("default", device=device)
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(args.activations) if args.activations else Path(tmp) / "acts"
        if not args.activations:
            random_store(store_path, -(-args.tokens // (CTX - 1)), ctx_len=CTX, d=D)
        store = ActivationStore(store_path)
        tokens = min(args.tokens, store.n_rows)
        sae = SAE.create(SAEConfig(d_in=D, d_sae=args.features, architecture="topk", k=args.k, model="default",
                                   layer=int(store.layer or 9)))
        with torch.no_grad():
            x = store.rows(0, 4096)
            sae.input_scale.fill_(D**0.5 / float(x.norm(dim=1).mean()))
        sae.save(Path(tmp) / "sae")
        sae = sae.to(device).eval()
        batch_rows = batch_contexts(args.batch_contexts, CTX, args.features) * (CTX - 1)
        encode, passes, total, finish = [], [], [], []
        for r in range(args.repeats):
            encode.append(encode_seconds(sae, store, tokens, batch_rows))
            cfg = AnalyzeConfig(sae=str(Path(tmp) / "sae"), activations=str(store_path), out=str(Path(tmp) / f"{r}.db"),
                                tokens=tokens, batch_contexts=args.batch_contexts, map="pca", checkpoint_seconds=0)
            start = time.perf_counter()
            analyze(cfg, model=model, progress=False)
            total.append(time.perf_counter() - start)
            con = sqlite3.connect(cfg.out)
            timings = json.loads(con.execute("SELECT value FROM meta WHERE key = 'timings'").fetchone()[0])
            con.close()
            passes.append(timings["passes"])
            finish.append(timings["finish"])
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "device": device, "threads": torch.get_num_threads(), "features": args.features, "k": args.k, "tokens": tokens,
        "batch_rows": batch_rows, "synthetic": not args.activations,
        "encode_tokens_per_s": tokens / min(encode),
        "analysis_passes_tokens_per_s": tokens / min(passes),
        "passes_over_encode": min(encode) / min(passes),
        "passes_over_encode_ideal": 0.5,
        "finish_seconds": min(finish),
        "analysis_total_tokens_per_s": tokens / min(total),
        "total_over_encode": min(encode) / min(total),
        "repeats": args.repeats,
    }
    print(json.dumps(result, indent=2))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
