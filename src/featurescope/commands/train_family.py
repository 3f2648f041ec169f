"""`featurescope train` with lists (`--k 16,32,64`) or `--sweep FILE`: a family trained in one pass
(featurescope.train.family)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from featurescope.cli_args import dataclass_from_args


def add_family_flags(p: argparse.ArgumentParser) -> None:
    """The flag `train` takes for a sweep file (the lists are the `many` fields' own flags)."""
    p.add_argument("--sweep", default=None, metavar="FILE",
                   help="JSON list of objects of settings, one member each (with an optional \"name\"): train them "
                        "all in one pass, crossed with any lists given (docs/training.md)")


def _lists(args: argparse.Namespace) -> dict[str, list]:
    from featurescope.train import TrainConfig

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if f.metadata.get("many") and isinstance(getattr(args, f.name, None), list)}


def is_family(args: argparse.Namespace) -> bool:
    """Whether the arguments ask for a family: a list value or a sweep file."""
    return bool(_lists(args)) or getattr(args, "sweep", None) is not None


def metrics_text(metrics: dict[str, Any]) -> str:
    """A training run's summary metrics on one line (`fvu 0.1234, l0 24`)."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def run(args: argparse.Namespace, main_rank: bool) -> int:
    """Train the family and print one line per member."""
    from featurescope.train import TrainConfig
    from featurescope.train.family import members, read_sweep, train_family

    lists = _lists(args)
    cfg = dataclass_from_args(TrainConfig, argparse.Namespace(**{**vars(args), **dict.fromkeys(lists)}))
    sweep = read_sweep(args.sweep) if args.sweep is not None else None
    result = train_family(cfg, members(cfg, lists, sweep), progress=not args.quiet)
    if main_rank:
        for name, r in result.members.items():
            state = "finished before" if name in result.skipped else f"{r.steps} steps"
            print(f"{r.path}: {state}; {metrics_text(r.metrics)}")
        print(f"{result.path}: {len(result.members)} SAEs ({len(result.skipped)} finished before), "
              f"one pass of {result.seconds:.1f} s; index in {result.path / 'family.json'}")
    return 0
