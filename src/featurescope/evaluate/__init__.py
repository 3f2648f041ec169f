"""Evaluate SAEs: `metrics` (FVU, L0, dead fraction; CE loss recovered and KL with SAEs spliced into the model),
`run` (what `featurescope eval` measures on: held-out rows and contexts, out-of-domain text; one SAE or several on
the same data), `compare` (several SAEs in one table, Pareto fronts), `report` (compare.json, pareto.html/png).
Definitions: docs/evaluation.md."""

from featurescope.evaluate.compare import CompareRow, Comparison, compare_saes, pareto_front
from featurescope.evaluate.metrics import (
    CEMetrics,
    ReconstructionMetrics,
    ce_metrics,
    ce_metrics_many,
    reconstruction_metrics,
)
from featurescope.evaluate.report import write_comparison
from featurescope.evaluate.run import EvalConfig, EvalResult, evaluate, evaluate_many

__all__ = [
    "CEMetrics",
    "CompareRow",
    "Comparison",
    "EvalConfig",
    "EvalResult",
    "ReconstructionMetrics",
    "ce_metrics",
    "ce_metrics_many",
    "compare_saes",
    "evaluate",
    "evaluate_many",
    "pareto_front",
    "reconstruction_metrics",
    "write_comparison",
]
