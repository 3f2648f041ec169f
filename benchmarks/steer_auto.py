"""Does `auto` steering make the concept show? The calibration rule against the fluency-only rule it replaced and
the paper's fixed 5×, on the same trials of random features of a trained SAE (a quality figure, not a timing).

    python benchmarks/steer_auto.py [--run runs/demo] [--features 20] [--seed 0] [--out FILE.json]

For each of `--features` random features that fired in the database, `calibrate_feature` runs the rule of
docs/steering.md. From the same continuations the script also reads what the earlier rule (version 1: stop at
the first multiple where *any* neutral continuation degenerates, keep the last one before it, never look at the
concept) and a fixed 5× would have chosen, running the extra trials they need (0.5× or 5×). Per rule it
reports how many features are *steered visibly*: the chosen multiple is fluent and the feature fires on more
of the steered continuations' tokens than on the unsteered ones (concept score > 0, re-read by the unsteered
model). Texts are the demo model's greedy continuations of the three neutral prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch

from featurescope.atomic import write_json
from featurescope.featuredb.core import FeatureStore
from featurescope.models import load_model
from featurescope.sae import SAE
from featurescope.steering import calibrate as cal


def _previous_rule(c: cal.Calibration, base: list[cal.Fluency], cfg: cal.CalibrationConfig) -> float | None:
    """The multiple rule version 1 chooses from the trials (None when it would need 0.5×, not run yet)."""
    chosen = None
    for t in c.trials:
        if t.multiple == cal.BELOW:
            continue
        if not all(cal.is_fluent(f, b, cfg) for f, b in zip(t.fluency, base, strict=True)):
            return chosen
        chosen = t.multiple
    return chosen


def _outcome(t: cal.Trial) -> dict[str, Any]:
    return {"multiple": t.multiple, "fluent": t.fluent, "concept": round(t.concept, 4),
            "visible": bool(t.fluent and t.concept > 0), "texts": t.texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="a demo-style run folder: sae/ and features.db")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/steer_auto.json")
    args = parser.parse_args()

    run = Path(args.run)
    store = FeatureStore.open(run / "features.db")
    sae = SAE.load(run / "sae").eval()
    model = load_model(str(store.meta.get("model", "default")))
    maxes = store.max_activations()
    alive = [i for i in range(len(maxes)) if maxes[i] > 0]
    features = random.Random(args.seed).sample(alive, min(args.features, len(alive)))
    cfg = cal.CalibrationConfig()
    layer = cal.check_compatible(model, sae)
    base_ids = cal.generate_batch(model, cfg.prompts, cfg.max_new_tokens)
    base = [cal.fluency(x) for x in base_ids]
    rows = []
    t0 = time.perf_counter()
    for n, f in enumerate(features, 1):
        top = float(maxes[f])
        c = cal.calibrate_feature(model, sae, f, top, cfg)
        r = cal._Run(model, sae, layer, f, top, cfg, base_ids, base, 0.0)
        r = r._replace(base_share=cal._share(r, base_ids))
        by_multiple = {t.multiple: t for t in c.trials}

        def trial(m: float, r: cal._Run = r, by_multiple: dict[float, cal.Trial] = by_multiple) -> cal.Trial:
            if m not in by_multiple:
                by_multiple[m] = cal._trial(r, m)
            return by_multiple[m]

        previous = _previous_rule(c, base, cfg)
        if previous is None:  # version 1 tried 0.5× when 1× was not fluent for every prompt, else kept 1×
            below = trial(cal.BELOW)
            previous = cal.BELOW if all(cal.is_fluent(x, b, cfg) for x, b in zip(below.fluency, base,
                                                                                  strict=True)) else cal.FALLBACK
        label = store.feature(f).label
        rows.append({"feature": f, "label": label.text if label else None, "max_activation": top,
                     "reason": c.reason, "auto": _outcome(trial(c.multiple)), "previous": _outcome(trial(previous)),
                     "fixed_5x": _outcome(trial(5.0))})
        print(f"[{n}/{len(features)}] feature {f} ({rows[-1]['label']}): auto {c.multiple:g}x "
              f"concept {rows[-1]['auto']['concept']:+.2f}, previous rule {previous:g}x "
              f"{rows[-1]['previous']['concept']:+.2f}, 5x fluent {rows[-1]['fixed_5x']['fluent']}", flush=True)
    summary = {rule: {"visible": sum(r[rule]["visible"] for r in rows),
                      "fluent": sum(r[rule]["fluent"] for r in rows),
                      "mean_concept": round(sum(r[rule]["concept"] for r in rows) / len(rows), 4)}
               for rule in ("auto", "previous", "fixed_5x")}
    result = {"command": "python benchmarks/steer_auto.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
              "sae": str(run / "sae"), "rule_version": cal.RULE_VERSION, "features": len(rows),
              "seconds": round(time.perf_counter() - t0, 1), "summary": summary, "rows": rows}
    write_json(args.out, result)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
