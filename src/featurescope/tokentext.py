"""Tokens as text: the raw bytes of each token, and byte-fallback tokens merged back into characters.

A tokenizer with byte fallback (SentencePiece: Gemma, Llama) splits a character it has no piece for into
byte tokens `<0xE2> <0x80> <0x89>`; decoding each alone gives "�". `token_bytes` records every token's bytes
(byte pieces → that byte; byte-level BPE pieces → their bytes; other tokens → the UTF-8 of their text), and
`merge_pieces` decodes a run of tokens incrementally, so a character split over several tokens is shown
once. Its output keeps one entry per token (positions stay aligned with token ids): the character goes on
the first of its tokens that is shown, its other tokens show "" and every one of them carries the max of
their activations. A character cut off by the edge of the sequence (or by a context boundary, which leaves
its last bytes after BOS) is left out (""), never shown as "�".
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
REPLACEMENT = "\ufffd"


class Merged(NamedTuple):
    """One entry per input token: its text after merging ("" for a byte continued by the previous entry)."""

    texts: list[str]
    acts: list[float]
    """Each token's activation; the tokens of one character all carry the max of theirs."""


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-to-unicode alphabet, inverted (character → byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def piece_bytes(piece: str, text: str) -> bytes:
    """The bytes of one token from its vocabulary piece and its decoded `text`.

    Only a token whose decoded text holds "�" needs its piece: `<0xNN>` is byte NN, a byte-level BPE piece maps
    back through GPT-2's alphabet; anything else is the UTF-8 of `text`.
    """
    if REPLACEMENT not in text:
        return text.encode("utf-8")
    m = BYTE_PIECE.match(piece or "")
    if m:
        return bytes([int(m.group(1), 16)])
    table = _byte_level_table()
    if piece and all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    return text.encode("utf-8")  # a real "�" in the vocabulary


def token_bytes(tokenizer: Any, ids: Sequence[int], decoded: dict[int, str] | None = None) -> dict[int, bytes]:
    """Token id → its raw bytes, for `ids` (see `piece_bytes`); `decoded`: each id's text, if already decoded."""
    ids = [int(i) for i in ids]
    texts = ([decoded[i] for i in ids] if decoded is not None else tokenizer.batch_decode([[i] for i in ids]))
    pieces = tokenizer.convert_ids_to_tokens(ids)
    return {i: piece_bytes(p if isinstance(p, str) else "", t) for i, p, t in zip(ids, pieces, texts, strict=True)}


def is_whole(data: bytes) -> bool:
    """Whether one token's bytes are whole UTF-8 (not a byte of a character split over several tokens)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def readable(data: bytes) -> str:
    """One token's bytes as text: decoded when they are whole UTF-8, else each byte as `<0xNN>`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in data)


def _is_continuation(b: int) -> bool:
    return 0x80 <= b <= 0xBF


class Merger:
    """`merge_pieces` for one sequence of tokens and any number of activation windows over it: the characters
    are assembled once."""

    def __init__(self, byte_seqs: Sequence[bytes]) -> None:
        self.owner = _owners(byte_seqs)  # token index → (first token of its group, group text)

    def __call__(self, acts: Sequence[float] | None = None, start: int = 0) -> Merged:
        """See `merge_pieces`."""
        if acts is None:
            acts = [0.0] * (len(self.owner) - start)
        end = start + len(acts)
        if start < 0 or end > len(self.owner):
            raise ValueError(f"window {start}..{end} outside a sequence of {len(self.owner)} tokens")
        texts = [""] * len(acts)
        merged = [float(a) for a in acts]
        group_of: dict[int, list[int]] = {}
        for i in range(start, end):
            group_of.setdefault(self.owner[i][0], []).append(i - start)
        for first, members in group_of.items():
            texts[members[0]] = self.owner[first][1]
            top = max(merged[m] for m in members)
            for m in members:
                merged[m] = top
        return Merged(texts, merged)


def merge_pieces(byte_seqs: Sequence[bytes], acts: Sequence[float] | None = None, start: int = 0) -> Merged:
    """Decode the tokens `byte_seqs[start:start + len(acts)]` as text, merging byte tokens into characters.

    `byte_seqs` may be a whole context and `acts` cover only a window of it from `start`: characters are then
    assembled from the context's bytes, so a window that starts or ends inside a character still shows it
    (on the window's first token of it). Without `acts`, the whole sequence with zero activations. (`Merger`
    does the same for many windows over one sequence.)
    """
    return Merger(byte_seqs)(acts, start)


def _owners(byte_seqs: Sequence[bytes]) -> list[tuple[int, str]]:
    """For each token: the first token of the group of tokens it is decoded with, and that group's text
    (meaningful at the group's first token)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out: list[tuple[int, str]] = []
    first, text, pending = 0, "", False
    for i, raw in enumerate(byte_seqs):
        data = bytes(raw)
        if not pending:  # continuation bytes with no lead byte before them: a character cut off (e.g. after BOS)
            k = 0
            while k < len(data) and _is_continuation(data[k]):
                k += 1
            data = data[k:]
            first, text = i, ""
        text += decoder.decode(data)
        pending = bool(decoder.getstate()[0])
        out.append((first, text))
        if not pending:
            out[first] = (first, text)
    if pending:  # a character cut off at the end: left out
        out[first] = (first, text)
    return [(f, out[f][1]) for f, _ in out]


def text_has_words(text: str | None, words: str | None) -> bool:
    """Whether `text` contains `words` as whole words (case-insensitive; not inside a longer word)."""
    if not text or not words or not words.strip():
        return False
    return _word_pattern(words.strip()).search(text) is not None


@lru_cache(maxsize=64)
def _word_pattern(words: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(words) + r"(?!\w)", re.IGNORECASE)
