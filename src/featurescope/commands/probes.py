"""Subcommands of the probes: multilingual (cross-lingual features), probe (safety features), monitor."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from featurescope.cli import add_command, add_count_flag, add_json_flag, positive_count
from featurescope.cli_args import add_dataclass_args, dataclass_from_args
from featurescope.errors import FeaturescopeError
from featurescope.terminal import dumps


def _print_json(obj: Any) -> None:
    from featurescope.featuredb.probes import to_json

    print(dumps(to_json(obj), indent=2))


def _cmd_multilingual(args: argparse.Namespace) -> int:
    from featurescope.probes.multilingual import DISTINCT, MultilingualConfig, no_findings_message, run_multilingual
    from featurescope.probes.render import multilingual_table
    from featurescope.terminal import SafeConsole as Console

    cfg = dataclass_from_args(MultilingualConfig, args)
    show = positive_count(args, "show")
    r = run_multilingual(cfg, progress=not args.quiet and not args.json)
    top = [f for f in r.top if not args.distinct_only or (f.same_token is not None and f.same_token < DISTINCT)]
    top = top[:show]
    r = r._replace(top=top, labels={f.feature: r.labels[f.feature] for f in top})
    if args.json:
        _print_json(r)
        return 0
    console = Console()
    head = (f"{r.path}: {r.segments['parallel']} parallel sentences + {r.segments['bible']} Bible verses in "
            f"{', '.join(r.langs)}; {r.eligible} eligible features, {r.listed} cross-lingual (score ≥ "
            f"{r.min_score:g} and > shuffled-alignment max {r.null_max:.3f}), of which {r.distinct} peak on "
            f"different tokens across languages; {r.seconds:.1f} s")
    console.print(head, markup=False, highlight=False)
    if r.top:
        console.print(multilingual_table(r.top, r.labels, "most cross-lingual features (best aligned example)"))
    else:
        console.print(no_findings_message(r), markup=False, highlight=False)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from featurescope.probes.probe import ProbeConfig, ProbeResult, SuppressionResult, run_probe
    from featurescope.probes.render import category_table, suppression_table
    from featurescope.terminal import SafeConsole as Console

    cfg = dataclass_from_args(ProbeConfig, args)
    show = positive_count(args, "show")
    r = run_probe(cfg, progress=not args.quiet and not args.json)
    if isinstance(r, ProbeResult):  # the labels of the candidates shown, as the tables show them
        shown = {c.feature for cat in r.categories for c in cat.candidates[:show]}
        r = r._replace(labels={f: label for f, label in r.labels.items() if f in shown})
    if args.json:
        _print_json(r)
        return 0
    console = Console()
    if isinstance(r, SuppressionResult):
        console.print(suppression_table(r.rows))
        console.print("selectivity > 0: suppressing the feature hurts the category's texts more than their matched "
                      "controls.", markup=False, highlight=False, style="dim")
        return 0
    for c in r.categories:
        console.print(category_table(c, r.labels, show))
    found = sum(bool(c.reported) for c in r.categories)
    console.print(f"{r.path}: probe set {r.probe_set!r}: features that generalise in {found} of {len(r.categories)} "
                  f"categories ({r.seconds:.1f} s)", markup=False, highlight=False)
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from featurescope.probes.monitor import MonitorConfig, run_monitor

    cfg = dataclass_from_args(MonitorConfig, args)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(encoding="utf-8", errors="surrogateescape")  # bad bytes: an error on that line
    try:
        return run_monitor(cfg, quiet=args.quiet)
    except (FeaturescopeError, KeyboardInterrupt):
        raise
    except Exception as e:  # exit 1 means "some texts flagged": a crash must not read as that
        raise FeaturescopeError(f"monitor failed: {type(e).__name__}: {e}") from e


def register(sub: Any) -> None:
    """Add `multilingual`, `probe` and `monitor` to the `featurescope` parser."""
    from featurescope.probes.monitor import MonitorConfig
    from featurescope.probes.multilingual import MultilingualConfig
    from featurescope.probes.probe import ProbeConfig

    p = add_command(sub, "multilingual", "score every feature's consistency across languages on parallel text and "
                    "list the most cross-lingual ones", _cmd_multilingual)
    add_dataclass_args(p, MultilingualConfig, positional=("db",))
    add_count_flag(p, "show", 15, "features listed")
    p.add_argument("--distinct-only", action=argparse.BooleanOptionalAction, default=False,
                   help="list only features whose peak tokens differ across most language pairs (not names or "
                        "numbers spelt alike)")
    add_json_flag(p)
    p = add_command(sub, "probe", "rank features per probe category (e.g. safety) by held-out AUROC, or measure "
                    "suppressing one (--suppress)", _cmd_probe)
    add_dataclass_args(p, ProbeConfig, positional=("db",))
    add_count_flag(p, "show", 5, "candidates shown per category")
    add_json_flag(p, "print JSON instead of tables")
    p = add_command(sub, "monitor", "flag texts (JSONL or lines, stdin or --input) on which chosen features fire "
                    "above a threshold calibrated for --fpr; exit 0 none flagged, 1 some, 2 error", _cmd_monitor)
    add_dataclass_args(p, MonitorConfig)
