"""Resume or refuse: a stage continues its output only with the settings that made it.

Each resumable stage records its settings beside its output (a store's manifest, `train_config.json`, the
database's meta), names the settings that do not change the result (`VOLATILE` next to its config), and on a
rerun calls `resume_or_refuse` with what it recorded and what it would record now.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from featurescope.errors import FeaturescopeError

OUT_ADVICE = "use another `out` or `overwrite`"
"""What to do instead, naming the settings `out` and `overwrite` (every resumable stage has both)."""


def settings(cfg: Any, volatile: Collection[str]) -> dict[str, Any]:
    """The fields of dataclass `cfg` that a rerun must repeat (all but the `volatile` ones)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in volatile}


def differing(saved: Mapping[str, Any], wanted: Mapping[str, Any], volatile: Collection[str] = ()) -> list[str]:
    """The keys of either mapping, sorted and without the `volatile` ones, whose values differ (missing: None)."""
    keys = (set(saved) | set(wanted)) - set(volatile)
    return sorted(k for k in keys if saved.get(k) != wanted.get(k))


def resume_or_refuse(saved: Mapping[str, Any] | None, wanted: Mapping[str, Any], volatile: Collection[str],
                     what: str, *, advice: str = OUT_ADVICE, values: bool = False) -> bool:
    """True if there are `saved` settings equal to `wanted` (outside `volatile`): resume; False if nothing was
    saved: start afresh. Else a FeaturescopeError "WHAT (x, y differ); ADVICE" (with `values`: "x 1 vs 2, ...")."""
    if saved is None:
        return False
    changed = differing(saved, wanted, volatile)
    if not changed:
        return True
    if values:
        detail = ", ".join(f"{k} {saved.get(k)!r} vs {wanted.get(k)!r}" for k in changed)
    else:
        detail = f"{', '.join(changed)} differ"
    raise FeaturescopeError(f"{what} ({detail}); {advice}", settings=("out", "overwrite"))
