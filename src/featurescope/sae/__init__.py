"""Sparse autoencoders: one interface, several architectures. Importing this package registers them all
(`featurescope.sae.registry`, in the order `ARCHITECTURES` lists them)."""

from featurescope.sae.base import SAE, ActiveFeatures, LossOutput, SparseCodes
from featurescope.sae.config import SAEConfig
from featurescope.sae.registry import REGISTRY, architecture_class

# Importing an architecture registers it: this order is the order of ARCHITECTURES. Before anything else that
# imports an architecture module (sae.io → sae.interop does).
# isort: off
from featurescope.sae.relu import ReLUSAE
from featurescope.sae.topk import BatchTopKSAE, TopKSAE
from featurescope.sae.jumprelu import JumpReLUSAE
from featurescope.sae.io import load_any
# isort: on

ARCHITECTURES: tuple[str, ...] = tuple(REGISTRY)
"""The architecture names, as `featurescope train --arch` offers them."""

__all__ = [
    "ARCHITECTURES", "SAE", "ActiveFeatures", "BatchTopKSAE", "JumpReLUSAE", "LossOutput", "ReLUSAE", "SAEConfig",
    "SparseCodes", "TopKSAE", "architecture_class", "load_any",
]
