"""Sparse autoencoders: one interface, several architectures (importing this module registers them all,
and the folder reader behind `SAE.load`)."""

from featurescope.sae.base import SAE, LossOutput, SparseCodes
from featurescope.sae.config import SAEConfig
from featurescope.sae.io import load_any
from featurescope.sae.jumprelu import JumpReLUSAE
from featurescope.sae.relu import ReLUSAE
from featurescope.sae.topk import BatchTopKSAE, TopKSAE

__all__ = [
    "SAE", "BatchTopKSAE", "JumpReLUSAE", "LossOutput", "ReLUSAE", "SAEConfig", "SparseCodes", "TopKSAE", "load_any",
]
