"""Subcommands for image-text models: harvest-images, analyze-images, image-probe (and `search --image`)."""

from __future__ import annotations

import argparse
from typing import Any

from featurescope.cli import add_command
from featurescope.cli_args import add_dataclass_args, dataclass_from_args
from featurescope.terminal import dumps


def _cmd_harvest_images(args: argparse.Namespace) -> int:
    from featurescope.harvest.images import ImageHarvestConfig, harvest_images

    r = harvest_images(dataclass_from_args(ImageHarvestConfig, args), progress=not args.quiet)
    print(f"{r.path}: {r.images} images, {r.rows} activation rows ({r.image_rows} on image patches) in {r.shards} "
          f"shards ({r.new_images} new images in {r.seconds:.1f} s)")
    return 0


def _cmd_analyze_images(args: argparse.Namespace) -> int:
    from featurescope.analysis.images import ImageAnalysisConfig, run_image_analysis

    r = run_image_analysis(dataclass_from_args(ImageAnalysisConfig, args), progress=not args.quiet)
    print(f"{r.path}: image tables for {r.images} images; {r.image_features} features fire mostly on images "
          f"({r.seconds:.1f} s)")
    return 0


def _cmd_image_probe(args: argparse.Namespace) -> int:
    from featurescope.analysis.image_probe import ImageProbeConfig, image_probe

    r = image_probe(dataclass_from_args(ImageProbeConfig, args), progress=not args.quiet)
    if args.json:
        print(dumps({"pairs": r.pairs, "top": [s._asdict() for s in r.top]}, indent=2))
        return 0
    from rich.table import Table

    from featurescope.terminal import SafeConsole as Console

    table = Table(title=f"features firing on both images and captions ({r.pairs} pairs)")
    for name in ("feature", "consistency", "jaccard", "images", "captions", "both", "label"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for s in r.top:
        jac = "—" if s.jaccard is None else f"{s.jaccard:.2f}"
        table.add_row(str(s.feature), f"{s.consistency:.3f}", jac, str(s.image_pairs), str(s.text_pairs),
                      str(s.both_pairs), s.label)
    Console().print(table)
    return 0


def image_search(store: Any, args: argparse.Namespace, device: str) -> None:
    """`featurescope search DB --image PATH`: print the features that fire on the image's patches."""
    from featurescope.analysis.image_search import search_image

    result = search_image(store, args.image, sae=args.sae, model=args.model, n=args.n, by=args.by,
                          text=args.text or "", device=device)
    if args.json:
        print(dumps({"image": result.image, "grid": result.grid, "resized": result.resized,
                     "hits": [h._asdict() for h in result.hits]}, indent=2))
        return
    from rich.table import Table

    from featurescope.terminal import SafeConsole as Console

    rows, cols = result.grid
    table = Table(title=f"features firing on {result.image} ({rows}×{cols} patches)")
    for name in ("feature", "max", "relative", "peak patch", "label"):
        table.add_column(name, justify="left" if name == "label" else "right")
    for h in result.hits:
        table.add_row(str(h.feature), f"{h.max:.4g}", f"{h.relative:.2f}", f"({h.row}, {h.col})", h.label)
    Console().print(table)


def register(sub: Any) -> None:
    """Add the image subcommands to the `featurescope` parser."""
    from featurescope.analysis.image_probe import ImageProbeConfig
    from featurescope.analysis.images import ImageAnalysisConfig
    from featurescope.harvest.images import ImageHarvestConfig

    add_dataclass_args(add_command(sub, "harvest-images", "run an image-text model over images (+ captions) and store "
                                   "its residual stream with each position's image patch", _cmd_harvest_images),
                       ImageHarvestConfig)
    add_dataclass_args(add_command(sub, "analyze-images", "add top images (per-patch activations), text-only "
                                   "contexts and modality scores to a feature database", _cmd_analyze_images),
                       ImageAnalysisConfig, positional=("db",))
    p = add_command(sub, "image-probe", "score how consistently each feature fires on paired images and captions",
                    _cmd_image_probe)
    add_dataclass_args(p, ImageProbeConfig, positional=("db",))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
