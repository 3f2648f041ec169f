"""The SAE architectures by name: every `SAE` subclass that sets `architecture` registers itself here.

This is the one list of architectures: `featurescope.sae.ARCHITECTURES`, the `--arch` choices of
`featurescope train` and every check of an architecture name read it. Importing `featurescope.sae`
registers the built-in ones (relu, topk, batchtopk, jumprelu, in that order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurescope.errors import FeaturescopeError

if TYPE_CHECKING:
    from featurescope.sae.base import SAE

REGISTRY: dict[str, type[SAE]] = {}
"""Architecture name -> its `SAE` subclass, in the order they were defined."""


def register(cls: type[SAE]) -> None:
    """Add `cls` under `cls.architecture` (a second class of the same name is an error)."""
    name = cls.architecture
    if name in REGISTRY and REGISTRY[name] is not cls:
        raise FeaturescopeError(f"two SAE classes for architecture {name!r}: "
                                f"{REGISTRY[name].__qualname__} and {cls.__qualname__}")
    REGISTRY[name] = cls


def architecture_class(name: str) -> type[SAE]:
    """The `SAE` subclass of architecture `name`; an unknown name is a FeaturescopeError listing the known ones."""
    cls = REGISTRY.get(name)
    if cls is None:
        raise FeaturescopeError(f"unknown SAE architecture {name!r}; choose one of {', '.join(REGISTRY)}")
    return cls
