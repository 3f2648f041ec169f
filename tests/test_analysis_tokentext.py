"""Byte-fallback tokens merged back into characters, with the real Gemma tokenizer."""

from __future__ import annotations

import pytest

from featurescope.analysis.tokentext import merge_pieces, piece_bytes, readable, token_bytes

# a thin space, two CJK letters, an Arabic-supplement letter and a 4-byte letter: each one Gemma 3 splits into
# byte tokens (<0xE2> <0x80> <0x89> …), between ordinary tokens
TEXT = "a\u2009b 龘 and 䲜 in ݐ or 𝔘 done"


@pytest.fixture(scope="module")
def pieces(gemma):
    ids = gemma.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    raw = token_bytes(gemma.tokenizer, ids)
    return ids, [raw[i] for i in ids], gemma.tokenizer.convert_ids_to_tokens(ids)


def test_the_text_really_holds_byte_tokens(pieces, gemma):
    ids, _, names = pieces
    assert sum(n.startswith("<0x") for n in names) >= 14
    assert "\ufffd" in "".join(gemma.tokenizer.batch_decode([[i] for i in ids]))  # the old per-token decoding


def test_merged_pieces_reproduce_the_text_and_take_the_max(pieces):
    ids, raw, names = pieces
    acts = [float(i % 7) for i in range(len(ids))]
    merged = merge_pieces(raw, acts)
    assert "".join(merged.texts) == TEXT
    assert not any("\ufffd" in t for t in merged.texts)
    assert len(merged.texts) == len(merged.acts) == len(ids)  # aligned with the token ids
    # the thin space: its three byte tokens show once, on the first, each with the max of the three
    i = names.index("<0xE2>")
    assert names[i:i + 3] == ["<0xE2>", "<0x80>", "<0x89>"]
    assert merged.texts[i:i + 3] == ["\u2009", "", ""]
    assert merged.acts[i:i + 3] == [max(acts[i:i + 3])] * 3
    assert merged.acts[i - 1] == acts[i - 1] and merged.acts[i + 3] == acts[i + 3]
    for ch in "龘䲜ݐ𝔘":
        assert ch in merged.texts


def test_a_window_inside_a_context_shows_characters_cut_by_its_edges(pieces):
    _, raw, names = pieces
    i = names.index("<0xE2>")
    window = merge_pieces(raw, [1.0, 2.0, 0.5], start=i + 1)  # starts at the thin space's second byte
    assert window.texts[0] == "\u2009" and window.texts[1] == "" and window.acts[:2] == [2.0, 2.0]
    alone = merge_pieces(raw[i + 1:i + 4])  # a sequence that starts mid-character: the cut character is left out
    assert "".join(alone.texts) == "b"
    cut = merge_pieces(raw[:i + 2])  # ends mid-character
    assert "".join(cut.texts) == TEXT[:TEXT.index("\u2009")]
    with pytest.raises(ValueError, match="outside"):
        merge_pieces(raw, [0.0] * 3, start=len(raw) - 2)


def test_pieces_give_bytes_and_lone_bytes_read_as_hex():
    assert piece_bytes("<0xE2>", "\ufffd") == b"\xe2"
    assert piece_bytes("▁river", " river") == b" river"
    assert piece_bytes("Ġâ", "\ufffd") == b" \xe2"  # byte-level BPE (GPT-2's alphabet)
    assert piece_bytes("\ufffd", "\ufffd") == "\ufffd".encode()  # a real replacement character
    assert readable(b"\xe2") == "<0xE2>" and readable(" 龘".encode()) == " 龘"
