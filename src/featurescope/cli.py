"""The `featurescope` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from featurescope.cli_args import add_dataclass_args, dataclass_from_args
from featurescope.errors import FeaturescopeError
from featurescope.terminal import clean

DESCRIPTION = """\
Find, explain and steer the features inside a language model with sparse autoencoders.

The pipeline, one command per stage:
  featurescope harvest --model default --layer 9 --corpus wiki-en --tokens 1000000 --out acts/
  featurescope train --activations acts/ --out sae/
  featurescope eval sae/ --activations acts/
  featurescope eval sae-a/ sae-b/ --activations acts/      (several SAEs: a table and Pareto plots)
  featurescope export sae/ --format saelens --out sae-saelens/

Every long command shows progress and resumes where it stopped when rerun with the same arguments.
"""


def _main_rank() -> bool:
    """False on the ranks > 0 of a torchrun job (their summaries would repeat rank 0's)."""
    return os.environ.get("RANK", "0") == "0"


def _cmd_harvest(args: argparse.Namespace) -> int:
    from featurescope.harvest import HarvestConfig, harvest

    cfg = dataclass_from_args(HarvestConfig, args)
    result = harvest(cfg, progress=not args.quiet)
    state = "complete" if result.complete else "incomplete"
    where = f" over layers {', '.join(map(str, result.layers))} (a store each in layer-L/)" if len(
        result.layers) > 1 else ""
    if _main_rank():
        print(f"{result.path}: {result.rows} activation rows in {result.shards} shards{where} ({state}; "
              f"{result.new_rows} new in {result.seconds:.1f} s)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from featurescope.commands import train_family
    from featurescope.train import TrainConfig, train

    if train_family.is_family(args):
        return train_family.run(args, _main_rank())
    cfg = dataclass_from_args(TrainConfig, args)
    result = train(cfg, progress=not args.quiet)
    if _main_rank():
        metrics = train_family.metrics_text(result.metrics)
        print(f"{result.path}: {result.steps} steps in {result.seconds:.1f} s; {metrics}")
    return 0


def _print_eval(result: Any, as_json: bool) -> None:
    data = result.as_dict()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from rich.table import Table

    from featurescope.terminal import SafeConsole as Console

    where = "IN-SAMPLE: training rows" if result.in_sample else "held-out rows, never trained on"
    table = Table(title=f"SAE evaluation ({where})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in data.items():
        if not isinstance(value, dict | list):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console = Console()
    console.print(table)
    for key, what in data["measured_on"].items():
        console.print(f"{key}: {what}", highlight=False)
    for note in data["notes"]:
        console.print(f"note: {note}", highlight=False)


def _print_comparison(c: Any, written: Any, db: str, as_json: bool) -> None:
    from featurescope.terminal import SafeConsole as Console
    from featurescope.terminal import dumps

    files = ", ".join(str(p) for p in written.paths) + (f"; stored in {db}" if db else "")
    if as_json:
        print(dumps(c.as_dict(), indent=2))
        print(f"featurescope eval: wrote {files}", file=sys.stderr)
        if written.skipped_png:
            print(f"featurescope eval: {written.skipped_png}", file=sys.stderr)
        return
    from rich.table import Table
    from rich.text import Text

    from featurescope.evaluate.report import COLUMNS, cell

    first = c.results[0]
    where = "IN-SAMPLE: training rows" if first.in_sample else "held-out rows, never trained on"
    table = Table(title=f"SAE comparison ({where}; ★ on the L0 / CE-recovered Pareto front)")
    for field, title in COLUMNS:
        table.add_column(title, justify="left" if field in ("name", "architecture") else "right")
    for row in c.rows:
        table.add_row(*(Text(cell(row, field)) for field, _ in COLUMNS))  # Text: a name's [brackets] stay text
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, Console(width=10_000).measure(table).maximum))  # piped: whole rows
    console.print(table)
    data = first.as_dict()
    for key, what in data["measured_on"].items():
        console.print(f"{key}: {what}", highlight=False)
    for note in [*data["notes"], *([written.skipped_png] if written.skipped_png else [])]:
        console.print(f"note: {note}", highlight=False)
    console.print(f"wrote {files}", highlight=False)


def _cmd_eval(args: argparse.Namespace) -> int:
    from featurescope.evaluate import EvalConfig, compare_saes, evaluate, write_comparison
    from featurescope.evaluate.compare import expand_paths

    paths = expand_paths(args.sae)
    cfg = dataclass_from_args(EvalConfig, args)
    cfg.sae = paths[0]
    if args.suite:
        from featurescope.commands import suite

        return suite.run(args, [str(p) for p in paths], cfg)
    progress = not args.quiet and not args.json
    if len(paths) == 1 and not cfg.compare_out and not cfg.db:
        _print_eval(evaluate(cfg, progress=progress), args.json)
        return 0
    if cfg.db:
        from featurescope.featuredb import FeatureStore

        FeatureStore.open(cfg.db).close()  # a bad database is an error now, not after the evaluation
    c = compare_saes(cfg, paths, progress=progress)
    written = write_comparison(c, cfg.compare_out or "eval-compare")
    if cfg.db:
        from featurescope.featuredb.compare import store_comparison

        store_comparison(cfg.db, c.as_dict())
    _print_comparison(c, written, cfg.db, args.json)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from featurescope.sae import SAE
    from featurescope.sae.io import export

    sae = SAE.load(args.sae)
    out = export(sae, Path(args.out), args.format, overwrite=args.overwrite)
    print(f"{out}: {sae.cfg.architecture} SAE written in {args.format} format")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from featurescope.activations import MANIFEST, ActivationStore, harvested_layers, store_path

    path = Path(args.path)
    layers = harvested_layers(path) if path.is_dir() else None
    if layers is not None:  # a harvest of several layers: each layer's store
        stores = {str(layer): ActivationStore(store_path(path, layer)) for layer in layers}
        print(json.dumps({"layers": {k: {**vars(s.info), "shards": len(s.shards)} for k, s in stores.items()}},
                         indent=2))
        return 0
    if (path / MANIFEST).is_file():
        store = ActivationStore(path)
        info = store.info
        print(json.dumps({**vars(info), "shards": len(store.shards)}, indent=2))
        return 0
    from featurescope.sae import SAE

    sae = SAE.load(path)
    print(json.dumps(sae.cfg.to_json(), indent=2))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from featurescope.corpus import NAMED_CORPORA
    from featurescope.models.cache import BUILTIN_MODELS

    table = BUILTIN_MODELS if args.command == "models" else NAMED_CORPORA
    for name, about in table.items():
        print(f"{name:16} {about}")
    return 0


def flag_wording(e: FeaturescopeError) -> str:
    """The message of `e` with each setting it names (`` `batch_size` ``) written as its flag (`--batch-size`)."""
    text = str(e)
    for name in e.settings:
        text = text.replace(f"`{name}`", "--" + name.replace("_", "-"))
    return text


class _PlainFormatter(logging.Formatter):
    """The message alone, without control characters (it can name a corpus or a file)."""

    def format(self, record: logging.LogRecord) -> str:
        return clean(super().format(record))


@contextlib.contextmanager
def _notices_to_stderr() -> Iterator[None]:
    """While the block runs, the library's notices (the `featurescope` loggers, INFO and up) are plain lines
    on stderr, as the library does not print."""
    logger = logging.getLogger("featurescope")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (exit 2), like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"featurescope: error: {message} (see {self.prog} --help)\n")


def add_command(sub: Any, name: str, help_text: str, run: Callable[[argparse.Namespace], int]
                ) -> argparse.ArgumentParser:
    """Add subcommand `name` whose handler `run(args)` returns the exit status."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    p.set_defaults(run=run)
    return p


def add_json_flag(p: argparse.ArgumentParser, help_text: str = "print JSON instead of a table") -> None:
    """`--json` / `--no-json`: the output format (the command's own; no library config has it)."""
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False, help=help_text)


def add_count_flag(p: argparse.ArgumentParser, name: str, default: int, help_text: str) -> None:
    """`--NAME N`: how many rows a command prints (checked positive by `positive_count`)."""
    p.add_argument("--" + name, type=int, default=default, help=f"{help_text} (default: {default})")


def positive_count(args: argparse.Namespace, name: str) -> int:
    """The value of count flag `--NAME`, which must be positive."""
    value = int(getattr(args, name))
    if value <= 0:
        raise FeaturescopeError(f"--{name} must be positive (got {value})")
    return value


def _register_harvest(sub: Any) -> None:
    from featurescope.harvest import HarvestConfig

    add_dataclass_args(add_command(sub, "harvest", "run a model over a corpus and store its residual stream at one "
                                   "layer (or several, from one forward pass)", _cmd_harvest), HarvestConfig)


def _register_train(sub: Any) -> None:
    from featurescope.commands.train_family import add_family_flags
    from featurescope.train import TrainConfig

    p = add_command(sub, "train", "train a sparse autoencoder on an activation store or a .npy [N, d]", _cmd_train)
    add_dataclass_args(p, TrainConfig)
    add_family_flags(p)


def _register_core(sub: Any) -> None:
    from featurescope.evaluate import EvalConfig

    _register_harvest(sub)
    _register_train(sub)
    p = add_command(sub, "eval", "FVU, L0, dead features, CE loss recovered and KL of an SAE, or of several side by "
                    "side (a table, Pareto plots)", _cmd_eval)
    p.add_argument("sae", nargs="+", metavar="SAE", help="SAE folder (ours, SAELens or sparsify); several, or a glob "
                   "such as 'runs/sae-*', evaluates them on the same data and compares them")
    add_dataclass_args(p, EvalConfig, skip=("sae",))
    add_json_flag(p)
    from featurescope.commands.suite import add_suite_flags

    add_suite_flags(p)
    p = add_command(sub, "export", "write an SAE in SAELens' or EleutherAI sparsify's format", _cmd_export)
    p.add_argument("sae", metavar="SAE", help="SAE folder")
    p.add_argument("--format", required=True, choices=("saelens", "sparsify"), help="target format")
    p.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p = add_command(sub, "info", "describe an activation store or an SAE folder", _cmd_info)
    p.add_argument("path", metavar="PATH")
    add_command(sub, "models", "list the built-in models", _cmd_list)
    add_command(sub, "corpora", "list the built-in corpora", _cmd_list)


# Modules that add subcommands: each has `register(sub)` (sub = the argparse subparsers object).
COMMAND_MODULES: tuple[str, ...] = tuple(f"featurescope.commands.{name}"
                                         for name in ("analysis", "steer", "serve", "probes", "vision"))


# Commands whose parser alone is built when the command line names them: the others' configs import their stages
# (scipy, the model loaders), seconds that `featurescope train` would spend before its first step.
ALONE: dict[str, Callable[[Any], None]] = {"harvest": _register_harvest, "train": _register_train}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the `featurescope` command (with `command` in `ALONE`: of that command only)."""
    import importlib

    parser = _Parser(prog="featurescope", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command in ALONE:
        ALONE[command](sub)
        return parser
    _register_core(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _command_named(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names: its first argument that is not an option (the top level's take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _quiet_hub() -> None:
    """No progress bars from transformers and the hub: set in the environment unless they are imported already
    (importing transformers takes seconds that a command without a model would spend for nothing)."""
    if "transformers" in sys.modules or "huggingface_hub" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run one subcommand; user errors print one line and exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_named(argv))
    args = parser.parse_args(argv)
    if not hasattr(args, "quiet"):
        args.quiet = False
    if args.quiet:
        _quiet_hub()
    try:
        with _notices_to_stderr():
            return int(args.run(args))
    except FeaturescopeError as e:
        print(f"featurescope: error: {clean(flag_wording(e))}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as e:  # damage the open-time check could not see (featurescope.featuredb.check)
        print(f"featurescope: error: a database is damaged ({clean(str(e))}); rebuild it", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featurescope: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
