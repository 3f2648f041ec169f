"""Locate data files inside installed packages without importing (running) them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from featurescope.errors import FeaturescopeError


def package_dir(module: str, pip_name: str, *, pip_flags: str = "") -> Path:
    """The folder of installed package `module`; its code is not executed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        flags = f"{pip_flags} " if pip_flags else ""
        raise FeaturescopeError(f"this needs the package {pip_name}: pip install {flags}{pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))
