"""Evaluate SAEs: `metrics` (FVU, L0, dead fraction; CE loss recovered and KL with SAEs spliced into the model),
`run` (what `featurescope eval` measures on: held-out rows and contexts, out-of-domain text; one SAE or several on
the same data).
Definitions: docs/evaluation.md."""

from featurescope.evaluate.metrics import (
    CEMetrics,
    ReconstructionMetrics,
    ce_metrics,
    ce_metrics_many,
    reconstruction_metrics,
)
from featurescope.evaluate.run import EvalConfig, EvalResult, evaluate, evaluate_many

__all__ = [
    "CEMetrics",
    "EvalConfig",
    "EvalResult",
    "ReconstructionMetrics",
    "ce_metrics",
    "ce_metrics_many",
    "evaluate",
    "evaluate_many",
    "reconstruction_metrics",
]
