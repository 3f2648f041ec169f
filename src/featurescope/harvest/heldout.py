"""The held-out part of a corpus: whole documents chosen by a stable hash of their id, never trained on.

A document is held out when the first 8 bytes of sha1(doc id), read as a fraction of 2⁶⁴, fall below the
held-out fraction `h`, so the choice depends on the id alone (not on the seed, the order or the model).
`split_contexts` tokenises the training documents and the held-out documents as two streams and
interleaves them: context `i` of the combined stream is held out when ⌊i·h⌋ > ⌊(i−1)·h⌋ (contexts 0,
1/h, 2/h, …). The pattern depends only on `i`, so skipping the first `n` contexts resumes a harvest and a
longer harvest extends a shorter one with the same split. When one stream ends, the other continues alone.
Both streams come from one pass over the corpus: each document goes to its part's queue as it is read.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterator

from featurescope.corpus import Document, TextSource, contexts

DEFAULT_HELDOUT = 0.05


def is_heldout_document(doc_id: str, fraction: float) -> bool:
    """True when document `doc_id` belongs to the held-out part of size `fraction`."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "big")
    return h < fraction * 2**64


def is_heldout_context(index: int, fraction: float) -> bool:
    """True when context `index` of the combined stream is a held-out one."""
    return fraction > 0 and math.floor(index * fraction) > math.floor((index - 1) * fraction)


class DocumentPart(TextSource):
    """The training (`heldout=False`) or held-out documents of another source."""

    def __init__(self, inner: TextSource, fraction: float, heldout: bool) -> None:
        self.inner, self.fraction, self.heldout = inner, fraction, heldout
        self.name, self.licence = inner.name, inner.licence

    def documents(self) -> Iterator[Document]:
        for doc in self.inner.documents():
            if is_heldout_document(doc.doc_id, self.fraction) == self.heldout:
                yield doc


class _Deal:
    """One pass over a source's documents, dealt to its training and held-out parts as each asks for its next
    one (documents of the other part met on the way wait in that part's queue)."""

    def __init__(self, inner: TextSource, fraction: float) -> None:
        self.docs, self.fraction = iter(inner.documents()), fraction
        self.queues: dict[bool, deque[Document]] = {False: deque(), True: deque()}

    def take(self, heldout: bool) -> Iterator[Document]:
        queue = self.queues[heldout]
        while True:
            while not queue:
                doc = next(self.docs, None)
                if doc is None:
                    return
                self.queues[is_heldout_document(doc.doc_id, self.fraction)].append(doc)
            yield queue.popleft()


class _Dealt(TextSource):
    """One part of a `_Deal`: the documents of `DocumentPart(inner, fraction, heldout)`, in the same order."""

    def __init__(self, deal: _Deal, heldout: bool, inner: TextSource) -> None:
        self.deal, self.heldout = deal, heldout
        self.name, self.licence = inner.name, inner.licence

    def documents(self) -> Iterator[Document]:
        return self.deal.take(self.heldout)


def split_contexts(source: TextSource, tokenizer: object, *, ctx_len: int, bos_id: int | None,
                   fraction: float) -> Iterator[tuple[list[int], bool]]:
    """(context, is_held_out) pairs: training and held-out documents interleaved as the module says."""
    if fraction <= 0:
        yield from ((ctx, False) for ctx in contexts(source, tokenizer, ctx_len=ctx_len, bos_id=bos_id))
        return
    deal = _Deal(source, fraction)
    streams = {
        part: contexts(_Dealt(deal, part, source), tokenizer, ctx_len=ctx_len, bos_id=bos_id) for part in (False, True)
    }
    index = 0
    while streams:
        want = is_heldout_context(index, fraction)
        part = want if want in streams else not want
        ctx = next(streams[part], None)
        if ctx is None:
            del streams[part]
            continue
        yield ctx, part
        index += 1
