"""Several SAEs side by side: one row of headline figures per SAE, measured on the same rows and contexts
(`evaluate_many`), and the Pareto fronts of sparsity against quality.

An SAE is on the CE front when no other SAE has an L0 at most its own and a CE loss recovered at least its own, one
of them strictly better; the FVU front is the same with lower FVU. SAEs missing either figure are on no front.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from featurescope._version import __version__
from featurescope.atomic import strict_json
from featurescope.errors import FeaturescopeError
from featurescope.evaluate.run import EvalConfig, EvalResult, evaluate_many
from featurescope.models import LanguageModel, default_device
from featurescope.sae import SAE
from featurescope.sae.io import detect_format, find_sae_folder

FORMAT = "featurescope.sae-compare"
VERSION = 1
METRICS = ("fvu", "l0", "dead_fraction", "loss_recovered", "kl", "ood_loss_recovered")
"""The figures of a row, in table order."""


class CompareRow(NamedTuple):
    """One SAE's headline figures (None: not measured, or not finite)."""

    name: str
    """A short name: the folder's, or the path as given when two folders share a name."""
    path: str
    format: str
    """featurescope, saelens or sparsify."""
    architecture: str
    d_sae: int
    k: int | None
    fvu: float | None
    l0: float | None
    dead_fraction: float | None
    loss_recovered: float | None
    kl: float | None
    ood_loss_recovered: float | None
    front_ce: bool
    """Not dominated on (lower L0, higher CE loss recovered)."""
    front_fvu: bool
    """Not dominated on (lower L0, lower FVU)."""


class Comparison(NamedTuple):
    """The rows, the full result of each SAE, and what they were measured on."""

    rows: list[CompareRow]
    results: list[EvalResult]
    model: str | None
    layer: int | None
    created: str = ""
    """UTC time of the measurement, ISO 8601."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON document of compare.json (docs/evaluation.md): settings, then one record per SAE."""
        first = self.results[0]
        return {
            "format": FORMAT, "version": VERSION, "featurescope_version": __version__,
            "created": self.created, "model": self.model, "layer": self.layer,
            "split": first.split, "in_sample": first.in_sample, "ce_source": first.ce_source,
            "ood_corpus": first.ood_corpus, "measured_on": first.as_dict()["measured_on"], "notes": list(first.notes),
            "saes": [{**row._asdict(), "eval": strict_json(r.as_dict())} for row, r in zip(self.rows, self.results,
                                                                                           strict=True)],
        }


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def pareto_front(xs: Sequence[float | None], ys: Sequence[float | None], *, higher_y: bool) -> list[bool]:
    """Which points are not dominated when a lower x and a higher (`higher_y`) or lower y are better; points
    missing a coordinate are on no front, equal points do not dominate each other."""
    sign = 1.0 if higher_y else -1.0
    pts = [None if x is None or y is None else (float(x), sign * float(y)) for x, y in zip(xs, ys, strict=True)]

    def dominated(p: tuple[float, float]) -> bool:
        return any(q is not None and q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts)

    return [p is not None and not dominated(p) for p in pts]


def expand_paths(args: Sequence[str]) -> list[str]:
    """SAE paths from the command line: an existing path as is, else its glob matches (sorted); no match is an
    error, and a path named twice counts once."""
    out: list[str] = []
    for arg in args:
        matches = [arg] if Path(arg).exists() or not glob.has_magic(arg) else sorted(glob.glob(arg))
        if not matches:
            raise FeaturescopeError(f"{arg}: no SAE folder matches")
        out += [m for m in matches if m not in out]
    return out


def short_names(paths: Sequence[str]) -> list[str]:
    """Each path's folder name, or the path as given where two folders share a name."""
    names = [Path(p).resolve().name or p for p in paths]
    return [n if names.count(n) == 1 else p for n, p in zip(names, paths, strict=True)]


def rows_of(names: Sequence[str], paths: Sequence[str], formats: Sequence[str], saes: Sequence[SAE],
            results: Sequence[EvalResult]) -> list[CompareRow]:
    """The table rows of evaluated SAEs, with their Pareto flags."""
    figures = []
    for r in results:
        rec, ce, ood = r.reconstruction, r.ce, r.ood_ce
        figures.append({
            "fvu": rec and rec.fvu, "l0": rec and rec.l0, "dead_fraction": rec and rec.dead_fraction,
            "loss_recovered": ce and ce.loss_recovered, "kl": ce and ce.kl,
            "ood_loss_recovered": ood and ood.loss_recovered})
    figures = [{k: _finite(v) for k, v in f.items()} for f in figures]
    l0 = [f["l0"] for f in figures]
    front_ce = pareto_front(l0, [f["loss_recovered"] for f in figures], higher_y=True)
    front_fvu = pareto_front(l0, [f["fvu"] for f in figures], higher_y=False)
    return [CompareRow(name, path, fmt, sae.cfg.architecture, sae.d_sae, sae.cfg.k, **f, front_ce=fc, front_fvu=ff)
            for name, path, fmt, sae, f, fc, ff in zip(names, paths, formats, saes, figures, front_ce, front_fvu,
                                                       strict=True)]


def compare_saes(cfg: EvalConfig, paths: Sequence[str], *, model: LanguageModel | None = None,
                 progress: bool = True) -> Comparison:
    """Evaluate the SAE folders `paths` (ours, SAELens', sparsify's) on the same rows and contexts and tabulate
    them (`cfg.sae` is ignored)."""
    if len(paths) < 1:
        raise FeaturescopeError("no SAE given")
    device = default_device() if cfg.device == "auto" else cfg.device
    formats = [detect_format(find_sae_folder(Path(p))) for p in paths]
    saes = [SAE.load(p, device=device) for p in paths]
    names = short_names(paths)
    results = evaluate_many(cfg, saes, names=names, model=model, progress=progress)
    layer = next((s.cfg.layer for s in saes if s.cfg.layer is not None), None)
    recorded = [str(s.cfg.model) for s in saes if s.cfg.model]
    model_name: str | None = cfg.model if cfg.model else (recorded[0] if recorded else None)
    return Comparison(rows_of(names, list(paths), formats, saes, results), results, model_name, layer,
                      datetime.now(UTC).isoformat(timespec="seconds"))
