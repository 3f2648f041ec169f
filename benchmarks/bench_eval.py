"""Next-token cross-entropy, the inner loop of CE loss recovered: `LanguageModel.next_token_nll` against the
model's own logits + `cross_entropy`, on the same batches, same process.

    python benchmarks/bench_eval.py [--contexts 32] [--model-dtype bfloat16] [--out FILE.json]

The baseline is what `featurescope eval` did before: a full forward that returns the [batch, seq, vocab] logits
(262k columns for Gemma 3), `.float()`, and `cross_entropy`. `next_token_nll` runs the same forward up to the head
and applies the head a chunk of positions at a time into reused buffers. Both give the same per-token losses
(`max_abs_diff`). Also times the bare forward up to the head (`head_input`), the floor of both.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from collections.abc import Callable

import torch

from featurescope.atomic import write_json
from featurescope.corpus import contexts, open_corpus
from featurescope.models import load_model


def _timed(fn: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor], repeats: int) -> tuple[float,
                                                                                                         torch.Tensor]:
    best, out = float("inf"), torch.empty(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = torch.cat([fn(b).flatten() for b in batches])
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--corpus", default="wiki-en")
    parser.add_argument("--contexts", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model-dtype", default="bfloat16")
    parser.add_argument("--out", default="benchmarks/results/eval_ce.json")
    args = parser.parse_args()

    model = load_model(args.model, device="auto", dtype=args.model_dtype)
    ids = torch.tensor(list(itertools.islice(
        contexts(open_corpus(args.corpus), model.tokenizer, ctx_len=128, bos_id=model.bos_id), args.contexts)))
    batches = list(ids.split(args.batch_size))
    tokens = ids.shape[0] * (ids.shape[1] - 1)

    def full_logits(b: torch.Tensor) -> torch.Tensor:
        logits = model.logits(b)[:, :-1].float()
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten().to(logits.device),
                                                 reduction="none")

    with torch.inference_mode():
        body_s, _ = _timed(model.head_input, batches, args.repeats)
        base_s, base = _timed(full_logits, batches, args.repeats)
        ours_s, ours = _timed(model.next_token_nll, batches, args.repeats)
    result = {
        "command": "python benchmarks/bench_eval.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                for k, v in vars(args).items() if k != "out"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "model": args.model, "model_dtype": args.model_dtype, "contexts": len(ids), "predicted_tokens": tokens,
        "forward_to_head_tokens_per_s": tokens / body_s,
        "logits_cross_entropy_tokens_per_s": tokens / base_s,
        "next_token_nll_tokens_per_s": tokens / ours_s,
        "speedup_over_logits_cross_entropy": base_s / ours_s,
        "next_token_nll_over_forward_to_head": body_s / ours_s,
        "max_abs_diff": float((ours - base).abs().max()),
    }
    write_json(args.out, result)
    print(f"next_token_nll {tokens / ours_s:,.0f} tok/s vs logits + cross_entropy {tokens / base_s:,.0f} tok/s "
          f"({base_s / ours_s:.2f}x); forward to the head alone {tokens / body_s:,.0f} tok/s; "
          f"max |diff| {result['max_abs_diff']:.2e} → {args.out}")


if __name__ == "__main__":
    main()
