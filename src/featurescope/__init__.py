"""featurescope: find, explain and steer the interpretable features inside a language model with SAEs."""

from __future__ import annotations

__version__ = "0.1.0"

from featurescope.errors import FeaturescopeError  # noqa: E402
from featurescope.sae import SAE, SAEConfig  # noqa: E402

__all__ = ["SAE", "FeaturescopeError", "SAEConfig", "__version__", "load_model"]


def load_model(name: str = "default", *, device: str = "auto", dtype: str | None = None):  # noqa: ANN201
    """Load a causal LM (see `featurescope.models.load_model`)."""
    from featurescope.models import load_model as _load

    return _load(name, device=device, dtype=dtype)
