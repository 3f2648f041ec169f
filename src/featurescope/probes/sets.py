"""Probe sets: labelled texts per category (JSONL), the built-in safety set, and their validation.

One JSON object per line (blank lines and lines starting with `#` are skipped):

    {"category": "deception", "label": 1, "group": "decep-01", "text": "..."}

`label` is 1 (positive: the text shows the category) or 0 (negative); `group` (optional, a string or integer)
ties a positive to its matched negative so that both land on the same side of the held-out split and the
permutation null swaps labels within the pair. Items without a group are their own group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from featurescope.errors import FeaturescopeError

DATA = Path(__file__).resolve().parent / "data"
BUILTIN_SETS = {"safety": DATA / "safety.jsonl"}
MIN_PER_LABEL = 4
"""Fewest positives and negatives a category needs (two on each side of the split)."""


class ProbeText(NamedTuple):
    category: str
    label: int
    text: str
    group: str


class ProbeSet(NamedTuple):
    """A loaded probe set: its name (a built-in name or the file's stem), path and texts in file order."""

    name: str
    path: Path
    items: list[ProbeText]

    @property
    def categories(self) -> list[str]:
        """Categories in order of first appearance."""
        return list(dict.fromkeys(t.category for t in self.items))

    def category(self, name: str) -> list[ProbeText]:
        """The texts of one category (an unknown name raises FeaturescopeError)."""
        items = [t for t in self.items if t.category == name]
        if not items:
            raise FeaturescopeError(f"probe set {self.name!r} has no category {name!r}; it has "
                                    f"{', '.join(self.categories)}")
        return items


def arrays(items: list[ProbeText]) -> tuple[np.ndarray, np.ndarray]:
    """(labels int [n], groups str [n]) of some probe texts."""
    return np.array([t.label for t in items], dtype=np.int64), np.array([t.group for t in items])


def _item(line: str, where: str, number: int) -> ProbeText:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise FeaturescopeError(f"{where}:{number}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise FeaturescopeError(f"{where}:{number}: expected a JSON object with category, label and text")
    category, label, text = obj.get("category"), obj.get("label"), obj.get("text")
    if not isinstance(category, str) or not category.strip():
        raise FeaturescopeError(f"{where}:{number}: \"category\" must be a non-empty string")
    if isinstance(label, bool):
        label = int(label)
    if label not in (0, 1) or isinstance(label, float):
        raise FeaturescopeError(f"{where}:{number}: \"label\" must be 1 (positive) or 0 (negative), got {label!r}")
    if not isinstance(text, str) or not text.strip():
        raise FeaturescopeError(f"{where}:{number}: \"text\" must be a non-empty string")
    group = obj.get("group")
    if group is None:
        group = f"#{number}"
    elif isinstance(group, bool) or not isinstance(group, str | int):
        raise FeaturescopeError(f"{where}:{number}: \"group\" must be a string or an integer")
    return ProbeText(category.strip(), int(label), text, f"{category.strip()}/{group}")


def check_set(items: list[ProbeText], where: str) -> None:
    """Every category has ≥ MIN_PER_LABEL positives and negatives; no text repeats within a category."""
    if not items:
        raise FeaturescopeError(f"{where}: holds no probe texts")
    for category in dict.fromkeys(t.category for t in items):
        own = [t for t in items if t.category == category]
        pos = sum(t.label for t in own)
        if pos < MIN_PER_LABEL or len(own) - pos < MIN_PER_LABEL:
            raise FeaturescopeError(f"{where}: category {category!r} has {pos} positives and {len(own) - pos} "
                                    f"negatives; it needs at least {MIN_PER_LABEL} of each")
        seen: set[str] = set()
        for t in own:
            if t.text in seen:
                raise FeaturescopeError(f"{where}: category {category!r} holds the same text twice: {t.text[:60]!r}")
            seen.add(t.text)


def load_probe_set(spec: str) -> ProbeSet:
    """A built-in set by name (`safety`) or a JSONL file path, validated (errors name the file and line)."""
    if spec in BUILTIN_SETS:
        path, name = BUILTIN_SETS[spec], spec
    else:
        path = Path(spec).expanduser()
        name = path.stem
        if not path.is_file():
            raise FeaturescopeError(f"{spec}: no such probe set (built-in: {', '.join(BUILTIN_SETS)}; or a .jsonl "
                                    "file)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise FeaturescopeError(f"{path}: not UTF-8 text") from None
    items = [_item(line, str(path), n) for n, line in enumerate(lines, 1)
             if line.strip() and not line.lstrip().startswith("#")]
    check_set(items, str(path))
    return ProbeSet(name, path.resolve(), items)
