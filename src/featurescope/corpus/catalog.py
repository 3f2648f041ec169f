"""`open_corpus`: a text source from its name (`NAMED_CORPORA`), a local path, or `hf:DATASET`."""

from __future__ import annotations

from pathlib import Path

from featurescope.corpus.mix import MixedSource
from featurescope.corpus.sources import (
    BIBLE_TRANSLATIONS,
    BibleSource,
    FileSource,
    HubSource,
    ProbeTextSource,
    TextSource,
    WikiSource,
    bible_codes,
)
from featurescope.errors import FeaturescopeError

NAMED_CORPORA = {
    "wiki-en": "English Wikipedia lead paragraphs (~10k vital articles)",
    "wiki-fr": "French Wikipedia lead paragraphs",
    "wiki-es": "Spanish Wikipedia lead paragraphs",
    "probe-texts": "short texts of the packaged probe sets (sentences in 5 languages, code lines; eval's OOD set)",
    "mix": "mixed: Wikipedia (en/fr/es), Python standard library sources, the Bible in 8 languages",
    "bible-<codes>": f"the Bible in one or more languages, e.g. bible-en,fr ({', '.join(BIBLE_TRANSLATIONS)})",
}


def open_corpus(spec: str, *, seed: int = 0) -> TextSource:
    """A text source from its name, a local path, or `hf:...`."""
    if not spec:
        raise FeaturescopeError("no corpus given")
    if spec == "mix":
        return MixedSource(seed)
    if spec.startswith("wiki-"):
        return WikiSource(spec[5:], seed)
    if spec.startswith("bible-"):
        return BibleSource(bible_codes(spec[6:]), seed)
    if spec.startswith("hf:"):
        return HubSource(spec[3:])
    if spec == "probe-texts":
        return ProbeTextSource()
    path = Path(spec).expanduser()
    if path.exists():
        return FileSource(path)
    raise FeaturescopeError(
        f"unknown corpus {spec!r}: use one of {', '.join(NAMED_CORPORA)}, a .txt/.jsonl file or folder, "
        "or hf:DATASET"
    )
