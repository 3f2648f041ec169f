"""Steering: clamp or add SAE features in the residual stream during generation (docs/steering.md).

`hook` holds the edit and the context manager `steer`; `values` parses and resolves "5x"-style values;
`generate` runs baseline and steered generations; `sweep` and `plot` measure a range of multiples; `images`
generates given an image (a VLM); `calibrate` and `auto` find a feature's fluent clamp at which its concept shows.
"""

from featurescope.steering.generate import Generation, generate
from featurescope.steering.hook import MODES, FeatureReader, SteeringHook, steer

__all__ = ["MODES", "FeatureReader", "Generation", "SteeringHook", "generate", "steer"]
