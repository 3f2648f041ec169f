"""featurescope: find, explain and steer the interpretable features inside a language model with SAEs."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from featurescope._version import __version__
from featurescope.errors import FeaturescopeError
from featurescope.sae import SAE, SAEConfig

if TYPE_CHECKING:
    from featurescope.models import LanguageModel
    from featurescope.steering.generate import Generation
    from featurescope.steering.hook import SteeringHook

__all__ = ["SAE", "FeaturescopeError", "SAEConfig", "__version__", "generate", "load_model", "steer"]


def load_model(name: str = "default", *, device: str = "auto", dtype: str | None = None):
    """Load a causal LM (see `featurescope.models.load_model`)."""
    from featurescope.models import load_model as _load

    return _load(name, device=device, dtype=dtype)


def steer(model: LanguageModel, sae: SAE, features: Mapping[int, Any], **kwargs: Any
          ) -> AbstractContextManager[SteeringHook]:
    """Context manager: steer `model` with SAE `features` during every forward pass (see `featurescope.steering.steer`).

        with featurescope.steer(model, sae, {123: "5x"}, max_acts="features.db"):
            model.hf.generate(...)
    """
    from featurescope.steering.hook import steer as _steer

    return _steer(model, sae, features, **kwargs)


def generate(model: LanguageModel, sae: SAE, prompt: str, features: Mapping[int, Any], **kwargs: Any) -> Generation:
    """Baseline and steered continuations of `prompt`, same seed (see `featurescope.steering.generate.generate`)."""
    from featurescope.steering.generate import generate as _generate

    return _generate(model, sae, prompt, features, **kwargs)
