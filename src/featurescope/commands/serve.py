"""The `featurescope serve` command (the web explorer) and `featurescope demo` (the whole pipeline, then serve)."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from featurescope.cli import add_command


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cmd_serve(args: argparse.Namespace) -> int:
    from featurescope.server import serve

    live = bool(args.sae or args.model)
    if live and not args.quiet:
        print("loading the model and SAE for live search and steering…", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it shut down on
        serve(args.db, sae=args.sae or None, model=args.model or None, host=args.host, port=args.port,
              device=_device(args.device), log_level=args.log_level, eval_path=args.eval or None,
              announce=lambda url: print(f"featurescope explorer: {url}  (Ctrl-C stops it)", flush=True))
    print("featurescope explorer: stopped", flush=True)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from featurescope.cli_args import dataclass_from_args
    from featurescope.demo import DemoConfig, run_demo

    return run_demo(dataclass_from_args(DemoConfig, args), progress=not args.quiet)


def register(sub: Any) -> None:
    """Add `serve` and `demo` to the `featurescope` parser."""
    from featurescope.cli_args import add_dataclass_args
    from featurescope.demo import DemoConfig

    p = add_command(sub, "serve", "browse a feature database in the web explorer (live search and steering with "
                    "--sae/--model)", _cmd_serve)
    p.add_argument("db", metavar="DB", help="feature database (from `featurescope analyze`)")
    p.add_argument("--sae", default="", help="SAE folder: turns on live text search and steering (default: off; "
                   "with --model alone, the SAE the database records)")
    p.add_argument("--model", default="", help="model for live search and steering (default: the database's, "
                   "when --sae is given)")
    p.add_argument("--eval", default="", metavar="EVAL_JSON", help="output of `featurescope eval --json`: the "
                   "overview shows its CE loss recovered")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                   "only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto for the live model (default: auto)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: warning)")
    add_dataclass_args(add_command(sub, "demo", "the whole pipeline on the embedded default model (harvest, train, "
                                   "analyse; each step skipped when done), then the explorer", _cmd_demo), DemoConfig)
