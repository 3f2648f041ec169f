"""`featurescope eval --suite`: the offline evaluation suite (featurescope.evalsuite) on one or more SAEs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from featurescope.errors import FeaturescopeError

SUITE_OUT = "eval-suite.json"
COLUMNS = (("llm_test_accuracy", "dense probe"), ("sae_test_accuracy", "all features"),
           ("sae_top_1_test_accuracy", "top-1"), ("sae_top_2_test_accuracy", "top-2"),
           ("sae_top_5_test_accuracy", "top-5"))


def add_suite_flags(p: argparse.ArgumentParser) -> None:
    """The flags `eval` takes for the suite."""
    p.add_argument("--suite", action="store_true",
                   help="run the offline suite instead (docs/evaluation.md): sparse probing (language id in 8 "
                        "languages, code vs prose; k = 1, 2, 5 against a dense probe) and the causal language task, "
                        "on held-out texts of the embedded corpora")
    p.add_argument("--suite-out", default=SUITE_OUT, metavar="FILE",
                   help=f"with --suite: JSON file of the results, SAEBench field names (default: {SUITE_OUT})")
    p.add_argument("--suite-texts", type=int, default=40, metavar="N",
                   help="with --suite: texts per class in train and in test (default: 40)")


def run(args: argparse.Namespace, paths: list[str], cfg: Any) -> int:
    """Run the suite on every SAE of `paths` with `cfg`'s model and device settings; print a table, write JSON."""
    from featurescope.atomic import write_json
    from featurescope.evalsuite.suite import SuiteConfig, run_suite
    from featurescope.models import default_device, load_model
    from featurescope.sae import SAE

    if args.suite_texts < 4:
        raise FeaturescopeError("--suite-texts must be at least 4")
    device = default_device() if cfg.device == "auto" else cfg.device
    suite_cfg = SuiteConfig(per_split=args.suite_texts, seed=cfg.seed)
    model = None
    results: dict[str, Any] = {}
    for path in paths:
        sae = SAE.load(path, device=device).eval()
        if sae.cfg.layer is None:
            raise FeaturescopeError(f"{path}: the SAE records no layer; the suite needs the block it reads")
        name = cfg.model or sae.cfg.model or "default"
        if model is None:
            model = load_model(str(name), device=device, dtype=cfg.model_dtype)
        if model.d_model != sae.cfg.d_in:
            raise FeaturescopeError(f"{path}: reads d_in={sae.cfg.d_in} but {model.name} has d_model={model.d_model}")
        results[str(path)] = run_suite(model, sae, int(sae.cfg.layer), suite_cfg, progress=not args.quiet)
    write_json(Path(args.suite_out), {"suite": "featurescope offline suite", "saes": results})
    _print(results, args.suite_out, args.json)
    return 0


def _print(results: dict[str, Any], out: str, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps({"saes": results}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="offline suite: sparse probing test accuracy (held-out texts) and the causal language task")
    for title in ("SAE", *(t for _, t in COLUMNS), "language shift", "random shift"):
        table.add_column(title, justify="left" if title == "SAE" else "right", overflow="fold")
    for path, r in results.items():
        sae = r["sparse_probing"]["eval_result_metrics"]["sae"]
        llm = r["sparse_probing"]["eval_result_metrics"]["llm"]
        causal = r["causal_language"]["eval_result_metrics"]["causal"]
        values = {**sae, **llm}
        table.add_row(Text(path), *(f"{values[k]:.3f}" for k, _ in COLUMNS),
                      f"{causal['language_shift']:+.4f}", f"{causal['random_shift']:+.4f}")
    console = Console()
    console.print(table)
    console.print(f"not run: {next(iter(results.values()))['autointerp']['skipped']}", highlight=False)
    console.print(f"wrote {out}", highlight=False)
