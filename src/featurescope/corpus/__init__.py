"""Corpora: text sources, their documents, and the fixed-length token contexts that harvest and analysis read.

- `sources`: `TextSource` and the built-in sources (Wikipedia, the Bible, local files, probe texts, `hf:`),
  `contexts` (tokenisation into fixed-length contexts).
- `mix`: the `mix` corpus (prose, code and scripture interleaved in fixed proportions).
- `catalog`: `open_corpus(name)` and `NAMED_CORPORA`.
"""

from featurescope.corpus.catalog import NAMED_CORPORA, open_corpus
from featurescope.corpus.sources import (
    BIBLE_TRANSLATIONS,
    WIKI_LICENCE,
    BibleSource,
    Document,
    TextSource,
    WikiSource,
    bible_verses,
    contexts,
    token_stream,
)

__all__ = [
    "BIBLE_TRANSLATIONS", "NAMED_CORPORA", "WIKI_LICENCE", "BibleSource", "Document", "TextSource", "WikiSource",
    "bible_verses", "contexts", "open_corpus", "token_stream",
]
