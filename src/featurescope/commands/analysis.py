"""Subcommands that write and read the feature database: analyze, explain, feature, search, neighbors, top."""

from __future__ import annotations

import argparse
from typing import Any

from featurescope.cli import add_command
from featurescope.cli_args import add_dataclass_args, dataclass_from_args
from featurescope.errors import FeaturescopeError
from featurescope.terminal import dumps


def _jsonable(obj: Any) -> Any:
    """NamedTuples as dicts, tuples as lists, recursively."""
    if hasattr(obj, "_asdict"):
        return {k: _jsonable(v) for k, v in obj._asdict().items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj


def _print(obj: Any, args: argparse.Namespace, renderable: Any = None) -> None:
    if args.json or renderable is None:
        print(dumps(_jsonable(obj), indent=2))
        return
    from featurescope.terminal import SafeConsole as Console

    Console().print(renderable)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from featurescope.analysis.pipeline import AnalyzeConfig, analyze

    cfg = dataclass_from_args(AnalyzeConfig, args)
    r = analyze(cfg, progress=not args.quiet)
    extra = f"; {r.explained} explained by an LLM" if r.explained else ""
    print(f"{r.path}: {r.d_sae} features ({r.alive} fire) over {r.tokens} tokens in {r.seconds:.1f} s{extra}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from featurescope.analysis.explain_all import ExplainConfig, explain_db

    r = explain_db(dataclass_from_args(ExplainConfig, args), progress=not args.quiet)
    mean = f", mean detection score {r.mean_score:.3f}" if r.mean_score is not None else ""
    print(f"{r.path}: {r.explained} features explained ({r.scored} scored{mean}) in {r.seconds:.1f} s")
    return 0


def _open(path: str) -> Any:
    from featurescope.featuredb.core import FeatureStore

    return FeatureStore.open(path)


def _feature_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FeaturescopeError(f"feature id must be an integer (got {text!r})") from None


def _cmd_feature(args: argparse.Namespace) -> int:
    from featurescope.analysis.render import feature_panel

    with _open(args.db) as store:
        feature = store.feature(_feature_id(args.id))
        _print(feature, args, None if args.json else feature_panel(feature, examples=args.examples))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from featurescope.analysis.render import search_table, summary_table

    with _open(args.db) as store:
        if args.label is not None:
            if args.text or args.image:
                raise FeaturescopeError("give either a text (or --image) or --label, not both")
            rows = store.search_labels(args.label, n=args.n)
            _print(rows, args, summary_table(f"features labelled like {args.label!r}", rows))
            return 0
        if args.text is None and args.image is None:
            raise FeaturescopeError("give a text to run through the model, --image PATH, or --label TEXT")
        from featurescope.analysis.search import search_text

        device = args.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.image is not None:  # the image's patches (and TEXT after it, if given): featurescope.commands.vision
            from featurescope.commands.vision import image_search

            image_search(store, args, device)
            return 0
        result = search_text(store, args.text, sae=args.sae, model=args.model, n=args.n, by=args.by, device=device)
        _print(result, args, search_table(result))
    return 0


def _cmd_neighbors(args: argparse.Namespace) -> int:
    from featurescope.analysis.render import neighbours_table

    with _open(args.db) as store:
        i = _feature_id(args.id)
        rows = store.neighbours(i, n=args.n)
        _print(rows, args, neighbours_table(i, rows))
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from featurescope.analysis.render import summary_table

    with _open(args.db) as store:
        rows = store.top(by=args.by, n=args.n, ascending=args.ascending)
        order = "lowest" if args.ascending else "highest"
        _print(rows, args, summary_table(f"features with the {order} {args.by}", rows))
    return 0


def _reader(sub: Any, name: str, help_text: str, run: Any) -> argparse.ArgumentParser:
    p = add_command(sub, name, help_text, run)
    p.add_argument("db", metavar="DB", help="feature database (from `featurescope analyze`)")
    return p


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def register(sub: Any) -> None:
    """Add the analysis subcommands to the `featurescope` parser."""
    from featurescope.analysis.explain_all import ExplainConfig
    from featurescope.analysis.pipeline import AnalyzeConfig
    from featurescope.featuredb.core import TOP_BY

    add_dataclass_args(add_command(sub, "analyze", "analyse every feature of an SAE and write the feature database",
                                   _cmd_analyze), AnalyzeConfig, positional=("sae",))
    add_dataclass_args(add_command(sub, "explain", "explain the features of a feature database with an LLM, "
                                   "scored by detection", _cmd_explain), ExplainConfig, positional=("db",))
    p = _reader(sub, "feature", "everything about one feature", _cmd_feature)
    p.add_argument("id", metavar="ID", help="feature id")
    p.add_argument("--examples", type=int, default=10, help="top contexts to show (default: 10)")
    _json_flag(p)
    p = _reader(sub, "search", "which features fire on a text (model + SAE), or find features by label", _cmd_search)
    p.add_argument("text", nargs="?", metavar="TEXT", help="text to run through the model and the SAE")
    p.add_argument("--label", metavar="TEXT",
                   help="find features whose label contains the words TEXT (whole words, any case) instead")
    p.add_argument("--image", metavar="PATH", help="an image to run through the (image-text) model instead: the "
                   "features that fire on its patches")
    p.add_argument("-n", "--n", type=int, default=10, help="features to list (default: 10)")
    p.add_argument("--by", choices=("max", "relative"), default="max",
                   help="rank by activation, or by activation relative to the feature's corpus max (default: max)")
    p.add_argument("--sae", help="SAE folder (default: the one the database records)")
    p.add_argument("--model", help="model (default: the one the database records)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    _json_flag(p)
    p = _reader(sub, "neighbors", "nearest features by decoder cosine similarity", _cmd_neighbors)
    p.add_argument("id", metavar="ID", help="feature id")
    p.add_argument("-n", "--n", type=int, default=10, help="neighbours to list (default: 10)")
    _json_flag(p)
    p = _reader(sub, "top", "browse features ordered by density, max activation or label score", _cmd_top)
    p.add_argument("--by", choices=TOP_BY, default="density", help="order (default: density)")
    p.add_argument("-n", "--n", type=int, default=20, help="features to list (default: 20)")
    p.add_argument("--ascending", action="store_true", help="lowest first")
    _json_flag(p)
