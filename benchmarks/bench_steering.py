"""Generation speed with steering vs without, on the same prompt, in the same process.

    python benchmarks/bench_steering.py [--tokens 16] [--repeats 8] [--threads 1] [--sae SAE_DIR] [--out FILE.json]

Every configuration generates exactly `--tokens` new tokens greedily (KV cache on) from the same prompt; runs
are interleaved (plain, then each steered configuration, `--repeats` times) so that load from other processes
hits them alike, and each figure is the best run (the least disturbed). Both wall time and this process's CPU
time are recorded: on a shared machine the CPU time of a single-threaded run (`--threads 1`, the default) is
the steadier measure of the work steering adds. Without `--sae`, randomly initialised
SAEs of realistic width are used (steering cost does not depend on the weights' values): a TopK SAE (the encoder
runs over every feature: the paper's clamp needs f_i, and TopK's f_i depends on all pre-activations) and a
ReLU SAE (only the steered features' encoder rows are multiplied). Target: ≤ 10% fewer tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from featurescope.atomic import write_json
from featurescope.models import load_model
from featurescope.sae import SAE, SAEConfig
from featurescope.steering.generate import encode_prompt, generation_kwargs
from featurescope.steering.hook import make_hook, steer

PROMPT = "Tell me how to get from the airport to the city centre. First,"


def _random_sae(arch: str, d_in: int, d_sae: int, layer: int) -> SAE:
    sae = SAE.create(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=32 if arch == "topk" else None,
                               model="default", layer=layer))
    with torch.no_grad():
        sae.input_scale.fill_(d_in**0.5 / 5000)  # residual norms ~5,000 at the default model's layer 9
    return sae


def _timed(model, ids, kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one generation."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert out.shape[1] - ids.shape[1] == kwargs["max_new_tokens"]
    return wall, cpu


def _hook_ms(model, sae, features, mode, calls: int = 300) -> float:
    """CPU milliseconds of one steering-hook call on one token's activation (what each generated token pays)."""
    hook, _ = make_hook(model, sae, features, mode=mode)
    h = torch.randn(1, 1, model.d_model, dtype=model.dtype, device=model.device) * 200
    hook(h)
    start = time.process_time()
    for _ in range(calls):
        hook(h)
    return (time.process_time() - start) / calls * 1000


def _summary(times: dict[str, list[tuple[float, float]]], tokens: int, which: int) -> dict[str, dict[str, float]]:
    best = {k: tokens / min(t[which] for t in v) for k, v in times.items()}
    median = {k: tokens / statistics.median(t[which] for t in v) for k, v in times.items()}
    return {
        "tokens_per_s_best": best, "tokens_per_s_median": median,
        "overhead_best": {k: 1 - best[k] / best["plain"] for k in times if k != "plain"},
        "overhead_median": {k: 1 - median[k] / median["plain"] for k in times if k != "plain"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--sae", default="", help="an SAE folder instead of random SAEs")
    parser.add_argument("--features", type=int, default=16384, help="width of the random SAEs")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", default="benchmarks/results/steering.json")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="auto")
    ids, _ = encode_prompt(model, PROMPT)
    kwargs = generation_kwargs(model, max_new_tokens=args.tokens, temperature=0.0, min_new_tokens=args.tokens)
    if args.sae:
        saes = {f"{Path(args.sae).name}": SAE.load(args.sae)}
    else:
        saes = {f"{a} {args.features}": _random_sae(a, model.d_model, args.features, args.layer)
                for a in ("topk", "relu")}
    configs = {}
    for name, sae in saes.items():
        configs[f"{name}: clamp 1 feature"] = (sae, {1: 50.0}, "clamp")
    first = next(iter(saes.values()))
    configs[f"{next(iter(saes))}: clamp 4 features"] = (first, {1: 50.0, 2: 0.0, 3: 20.0, 4: -5.0}, "clamp")
    configs["add 1 feature"] = (first, {1: 50.0}, "add")
    _timed(model, ids, kwargs)  # warm-up
    times: dict[str, list[tuple[float, float]]] = {"plain": [], **{k: [] for k in configs}}
    for _ in range(args.repeats):
        times["plain"].append(_timed(model, ids, kwargs))
        for name, (sae, features, mode) in configs.items():
            with steer(model, sae, features, mode=mode):
                times[name].append(_timed(model, ids, kwargs))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "device": str(model.device), "model_dtype": str(model.dtype), "model": args.model, "layer": args.layer,
        "threads": torch.get_num_threads(), "prompt_tokens": ids.shape[1], "new_tokens": args.tokens,
        "repeats": args.repeats, "wall": _summary(times, args.tokens, 0), "cpu": _summary(times, args.tokens, 1),
        "hook_cpu_ms_per_token": {k: _hook_ms(model, *v) for k, v in configs.items()},
        "seconds_wall_cpu": times,
    }
    plain_ms = 1000 / result["cpu"]["tokens_per_s_best"]["plain"]
    result["hook_share_of_plain_token"] = {k: v / plain_ms for k, v in result["hook_cpu_ms_per_token"].items()}
    print(json.dumps(result, indent=2))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
