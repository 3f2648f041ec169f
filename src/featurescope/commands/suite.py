"""`featurescope eval --suite`: the offline evaluation suite (featurescope.evalsuite) on one or more SAEs."""

from __future__ import annotations

import argparse
import os
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
                        "languages, code vs prose; k = 1, 2, 5 against a dense probe), feature absorption on the "
                        "first-letter task, the causal language task and, with --explainer and --db, AutoInterp; "
                        "with --db the results are also stored in that feature database")
    p.add_argument("--suite-out", default=SUITE_OUT, metavar="FILE",
                   help=f"with --suite: JSON file of the results, SAEBench field names (default: {SUITE_OUT})")
    p.add_argument("--suite-texts", type=int, default=40, metavar="N",
                   help="with --suite: texts per class in train and in test (default: 40)")
    p.add_argument("--explainer", default="", metavar="URL",
                   help="with --suite and --db: OpenAI-compatible endpoint (e.g. http://localhost:8080/v1) that "
                        "explains features of the database for AutoInterp detection (unset: AutoInterp is skipped)")
    p.add_argument("--explainer-model", default="", metavar="NAME", help="with --explainer: the model name it serves")
    p.add_argument("--autointerp-features", type=int, default=10, metavar="N",
                   help="with --explainer: features explained and scored (default: 10)")


def check_out(path: str) -> None:
    """A one-line error now, not after the suite, unless a file can be written at `path`."""
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise FeaturescopeError(f"--suite-out {path} is a directory")
    if not parent.is_dir():
        raise FeaturescopeError(f"--suite-out {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise FeaturescopeError(f"--suite-out {path} cannot be written")


def _explainer(args: argparse.Namespace) -> Any:
    if not args.explainer:
        return None
    from featurescope.analysis.explain_all import make_explainer

    return make_explainer(args.explainer, args.explainer_model)


def run(args: argparse.Namespace, paths: list[str], cfg: Any) -> int:
    """Run the suite on every SAE of `paths` with `cfg`'s model and device settings; print a table, write JSON
    (and store the results in `cfg.db` when given)."""
    from featurescope.atomic import strict_json, write_json
    from featurescope.evalsuite.autointerp import db_mismatch
    from featurescope.evalsuite.suite import SuiteConfig, run_suite
    from featurescope.evaluate.run import eval_device, eval_model, model_name
    from featurescope.sae import SAE

    if args.suite_texts < 4:
        raise FeaturescopeError("--suite-texts must be at least 4")
    if args.autointerp_features < 1:
        raise FeaturescopeError("--autointerp-features must be at least 1")
    check_out(args.suite_out)
    if cfg.db:
        from featurescope.featuredb import FeatureStore

        FeatureStore.open(cfg.db).close()  # a bad database is an error now, not after the suite
    explainer = _explainer(args)
    device = eval_device(cfg)
    suite_cfg = SuiteConfig(per_split=args.suite_texts, autointerp_features=args.autointerp_features, seed=cfg.seed)
    saes = {path: SAE.load(path, device=device).eval() for path in paths}
    layers = {path: sae.cfg.layer for path, sae in saes.items()}
    for path, layer in layers.items():
        if layer is None:
            raise FeaturescopeError(f"{path}: the SAE records no layer; the suite needs the block it reads")
    model = None
    results: dict[str, Any] = {}
    for path, sae in saes.items():
        model = eval_model(cfg, model_name(cfg, list(saes.values())) or "default", sae, device, model=model,
                           label=path)
        why = "" if explainer is None or not cfg.db else db_mismatch(cfg.db, sae, path, len(saes) == 1)
        results[str(path)] = run_suite(model, sae, int(layers[path] or 0), suite_cfg, explainer=explainer, db=cfg.db,
                                       autointerp_skipped=why and f"AutoInterp skipped: {why}",
                                       progress=not args.quiet)
    write_json(Path(args.suite_out), {"suite": "featurescope offline suite", "saes": strict_json(results)})
    if cfg.db:
        from featurescope.featuredb.suite import store_suite

        store_suite(cfg.db, results)
    _print(results, args.suite_out + (f"; stored in {cfg.db}" if cfg.db else ""), args.json)
    return 0


def _print(results: dict[str, Any], out: str, as_json: bool) -> None:
    import json

    from featurescope.atomic import strict_json

    if as_json:
        print(json.dumps({"saes": strict_json(results)}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="offline suite: sparse probing test accuracy (held-out texts), first-letter absorption, "
                        "the causal language task and AutoInterp detection")
    for title in ("SAE", *(t for _, t in COLUMNS), "absorption", "full absorption", "split", "language shift",
                  "random shift", "autointerp"):
        table.add_column(title, justify="left" if title == "SAE" else "right", overflow="fold")
    notes = []
    for path, r in results.items():
        sae = r["sparse_probing"]["eval_result_metrics"]["sae"]
        llm = r["sparse_probing"]["eval_result_metrics"]["llm"]
        absorbed = r["absorption_first_letter"]["eval_result_metrics"]["mean"]
        causal = r["causal_language"]["eval_result_metrics"]["causal"]
        values = {**sae, **llm}
        interp = r["autointerp"]
        if "skipped" in interp:
            notes.append(f"{path}: not run: {interp['skipped']}")
            score = "skipped"
        else:
            score = f"{interp['eval_result_metrics']['autointerp']['autointerp_score']:.3f}"
        table.add_row(Text(path), *(f"{values[k]:.3f}" for k, _ in COLUMNS),
                      f"{absorbed['mean_absorption_fraction_score']:.3f}",
                      f"{absorbed['mean_full_absorption_score']:.3f}", f"{absorbed['mean_num_split_features']:.2f}",
                      f"{causal['language_shift']:+.4f}", f"{causal['random_shift']:+.4f}", score)
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)
    console.print(f"wrote {out}", highlight=False)
