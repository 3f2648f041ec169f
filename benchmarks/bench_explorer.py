"""Explorer responsiveness: latency of the text-search API while a 200-token steering generation runs.

    python benchmarks/bench_explorer.py [--db DB --sae SAE_DIR] [--tokens 200] [--blocking] [--out FILE.json]

A live explorer (uvicorn in a thread, as `featurescope serve` runs it) with the default model. First the search
API alone (idle latency), then the same search sent back to back while a streamed steer (`/api/steer/stream`,
baseline + one steered column of `--tokens` each) runs; with `--blocking`, also while the one-shot `/api/steer`
runs (it holds the model for the whole generation: the "before" figure). Without `--db`, the test suite's small
database is built first (a 256-feature SAE on 2,000 tokens; about a minute). Target: p99 ≤ 2 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from featurescope.atomic import write_json
from featurescope.models import load_model
from featurescope.sae import SAE
from featurescope.server import create_app
from featurescope.server.run import ServerThread

TEXT = "The Golden Gate Bridge spans the strait near San Francisco."
PROMPT = "The Golden Gate Bridge is"


def _quantiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return {"n": len(s), "p50": statistics.median(s), "p99": p99, "max": s[-1], "mean": statistics.fmean(s)}


def _search(client: httpx.Client) -> float:
    t0 = time.perf_counter()
    r = client.post("/api/search/text", json={"text": TEXT, "n": 10})
    r.raise_for_status()
    return time.perf_counter() - t0


def _during(client: httpx.Client, generate: Any) -> dict[str, Any]:
    """Search latencies measured back to back while `generate()` runs in a thread, and its duration."""
    done = threading.Event()
    took: list[float] = []

    def run() -> None:
        try:
            generate()
        finally:
            done.set()

    t0 = time.perf_counter()
    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(1.0)  # let the generation start
    while not done.is_set():
        took.append(_search(client))
    worker.join()
    return {"search": _quantiles(took), "generation_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db")
    p.add_argument("--sae")
    p.add_argument("--feature", type=int, default=3)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--blocking", action="store_true", help="also measure during the one-shot /api/steer")
    p.add_argument("--out")
    a = p.parse_args()
    model = load_model("default")
    if a.db is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from explorer_helpers import build_db

        built = build_db(model, Path(tempfile.mkdtemp(prefix="bench-explorer-")))
        a.db, a.sae = str(built.db), str(built.sae_dir)
    server = ServerThread(create_app(a.db, sae=SAE.load(a.sae), model=model)).start()
    steer = {"prompt": PROMPT, "max_new_tokens": a.tokens, "features": [{"feature": a.feature, "value": "5x"}]}
    stream = {"prompt": PROMPT, "max_new_tokens": a.tokens, "columns": [[{"feature": a.feature, "value": "5x"}]]}
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                              "tokens": a.tokens, "text": TEXT}
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client, \
                httpx.Client(base_url=server.url, timeout=600) as gen:
            _search(client)  # warm-up
            result["idle"] = _quantiles([_search(client) for _ in range(10)])

            def streamed() -> None:
                with gen.stream("POST", "/api/steer/stream", json=stream) as r:
                    tokens = sum('"token"' in line for line in r.iter_lines())
                result["streamed_token_events"] = tokens

            result["during_stream"] = _during(client, streamed)
            if a.blocking:
                result["during_blocking"] = _during(client, lambda: gen.post("/api/steer", json=steer))
    finally:
        server.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        write_json(a.out, result)


if __name__ == "__main__":
    main()
