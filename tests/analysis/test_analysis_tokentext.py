"""Byte-fallback tokens merged back into characters, with the real Gemma tokenizer."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch

from featurescope.analysis.write import Finished, _peak_characters
from featurescope.featuredb.core import FORMAT, VERSION, FeatureStore, create_db
from featurescope.tokentext import merge_pieces, piece_bytes, readable, token_bytes

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
    after_bos = merge_pieces([b"<bos>", *raw[i + 1:i + 4]])  # a context cut inside a character: its tail after BOS
    assert after_bos.texts[:3] == ["<bos>", "", ""] and "".join(after_bos.texts) == "<bos>b"
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


def _tiny_db(path, gemma, old: bool = False):
    """A two-feature database whose one context holds byte tokens; `old`: as version 1 wrote it."""
    tok = gemma.tokenizer
    ids = [gemma.bos_id, *tok(TEXT, add_special_tokens=False)["input_ids"]]
    names = tok.convert_ids_to_tokens(ids)
    raw = token_bytes(tok, ids)
    texts = dict(zip(ids, tok.batch_decode([[i] for i in ids]), strict=True))
    i = names.index("<0xE2>")
    acts = np.array([0.0, 3.0, 1.0, 0.0, 0.5, 0.0], dtype="<f4")  # window from the thin space's 2nd byte
    with create_db(path) as db:
        db.insert("features", ("id", "count", "density", "mean", "std", "max", "max_context", "max_position",
                               "decoder_norm"), [(0, 3, 0.1, 1.0, 0.1, 3.0, 0, i + 2, 1.0),
                                                 (1, 0, 0.0, None, None, 0.0, None, None, 1.0)])
        db.insert("contexts", ("id", "tokens"), [(0, np.array(ids, dtype="<i4").tobytes())])
        db.insert("tokens", ("id", "text", "bytes"), [(t, texts[t], raw[t]) for t in sorted(set(ids))])
        db.insert("examples", ("feature", "kind", "interval", "rank", "value", "context", "position", "start",
                               "acts"), [(0, "top", 0, 0, 3.0, 0, i + 2, i + 1, acts.tobytes())])
        db.insert("logit_effects", ("feature", "sign", "rank", "token", "value"),
                  [(0, 1, 0, ids[i], 1.5), (0, -1, 0, ids[1], -1.0)])
        db.insert("neighbours", ("feature", "rank", "other", "cosine"), [(0, 0, 1, 0.5), (1, 0, 0, 0.5)])
        db.insert("labels", ("feature", "kind", "text", "score", "details", "score_lower"),
                  [(0, "auto", "a", 0.9, "{}", 0.8), (0, "llm", "b", 1.0, "{}", 0.4)])
        db.meta({"format": FORMAT, "version": 1 if old else VERSION, "d_sae": 2})
    if old:
        con = sqlite3.connect(path)
        with con:
            con.execute("ALTER TABLE tokens DROP COLUMN bytes")
            con.execute("ALTER TABLE labels DROP COLUMN score_lower")
        con.close()
    return ids, i


def test_the_database_shows_characters_and_reads_lone_bytes_as_hex(gemma, tmp_path):
    ids, i = _tiny_db(tmp_path / "f.db", gemma)
    with FeatureStore.open(tmp_path / "f.db") as store:
        f = store.feature(0)
    (ex,) = f.top
    assert ex.token_ids == ids[i + 1:i + 7] and len(ex.tokens) == len(ex.acts) == 6
    assert ex.tokens[:3] == ["\u2009", "", "b"]  # the window starts inside the thin space: still shown
    assert ex.acts[:2] == [3.0, 3.0] and ex.acts[2:4] == [1.0, 0.0]
    assert ex.tokens[4:] == ["龘", ""] and ex.acts[4:] == [0.5, 0.5]  # its 3rd byte is past the window's end
    assert "\ufffd" not in "".join(ex.tokens) and "".join(ex.tokens) in TEXT
    assert f.positive_logits[0].text == "<0xE2>"  # a lone promoted byte token, readable
    assert [lb.kind for lb in f.labels] == ["auto", "llm"] and f.label.score_lower == 0.8  # ranked by the bound
    assert f.label.rank_score == 0.8


def test_version_1_databases_read_as_before(gemma, tmp_path):
    _tiny_db(tmp_path / "old.db", gemma, old=True)
    with FeatureStore.open(tmp_path / "old.db") as store:
        f = store.feature(0)
        assert store.top(by="label-score", n=1)[0].score == 1.0
    assert "\ufffd" in "".join(f.top[0].tokens)  # no bytes recorded: the old per-token text
    assert f.positive_logits[0].text == "\ufffd"
    assert [lb.kind for lb in f.labels] == ["llm", "auto"] and f.label.score_lower is None  # ranked by score


def test_a_byte_token_at_the_peaks_is_named_by_its_character(gemma, pieces):
    ids, raw, names = pieces
    i = names.index("<0x80>")  # the thin space's second byte
    context = torch.tensor([[gemma.bos_id, *ids]], dtype=torch.int32)
    fin = Finished(None, torch.tensor([7]), context, {}, None, None, None, None, dict(zip(ids, raw, strict=True)))
    chars = _peak_characters(fin, torch.tensor([7, 7]), torch.tensor([i + 1, i]), torch.tensor([ids[i], ids[i - 1]]),
                             [ids[i]])
    assert chars == {ids[i]: "\u2009"}
