"""Whether a folder is ours to write into or replace, decided by what its files hold, never by names.

Every command writes only into a folder it created, an empty one, or one that holds its own artefact,
and deletes only files it wrote; `--overwrite` follows the same rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from featurescope.atomic import read_json
from featurescope.errors import FeaturescopeError


def safetensors_format(path: Path) -> str | None:
    """The "format" entry of a safetensors file's metadata (None if absent or not a safetensors file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except Exception:  # any unreadable or foreign file is simply not ours
        return None


def manifest_of(path: Path, fmt: str) -> dict[str, Any] | None:
    """The JSON object in `path` if it is a file whose "format" is `fmt`, else None (malformed JSON raises
    FeaturescopeError)."""
    if not path.is_file():
        return None
    m = read_json(path)
    return m if isinstance(m, dict) and m.get("format") == fmt else None


def foreign_entries(folder: Path, is_ours: Callable[[Path], bool]) -> list[str]:
    """Names of the entries of `folder` that `is_ours` does not claim (sorted)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not is_ours(p))


def refuse_foreign(folder: Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """Raise a one-line FeaturescopeError if `folder` holds anything that is not ours."""
    foreign = foreign_entries(folder, is_ours)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FeaturescopeError(f"{folder}: holds files that are not {what} ({shown}); nothing was changed — "
                                "choose an empty or new folder")


def check_replaceable(out: Path) -> None:
    """Refuse to replace the current folder or one above it (renaming it away would pull the floor)."""
    here = Path.cwd().resolve()
    target = out.resolve()
    if target == here or target in here.parents:
        raise FeaturescopeError(f"{out}: is the current folder or contains it; give a folder below it")


def open_permissions(path: Path) -> None:
    """Give a folder made by tempfile.mkdtemp (0700) the user's umask like any other folder."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o777 & ~mask)
