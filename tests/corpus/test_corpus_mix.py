"""The `mix` corpus: stated character shares, seeded deterministic order, stdlib sources without tests."""

from __future__ import annotations

import itertools
from collections import Counter

from featurescope.corpus import Document, open_corpus
from featurescope.corpus.mix import MIX_SHARES, code_chunks, interleave, stdlib_files


def _part(doc_id: str) -> str:
    head = doc_id.split(":")[0]
    return "code" if head == "python" else head.split("-")[0]


def test_mix_holds_its_shares_and_is_deterministic():
    src = open_corpus("mix")
    docs = list(itertools.islice(src.documents(), 1500))
    chars = Counter()
    for d in docs:
        chars[_part(d.doc_id)] += len(d.text)
    total = sum(chars.values())
    for part, share in MIX_SHARES.items():
        assert abs(chars[part] / total - share) < 0.02, (part, chars[part] / total)
    assert {d.doc_id.split(":")[0] for d in docs} >= {"wiki-en", "wiki-fr", "python", "bible-zh", "bible-ru"}
    again = [d.doc_id for d in itertools.islice(open_corpus("mix").documents(), 200)]
    other = [d.doc_id for d in itertools.islice(open_corpus("mix", seed=1).documents(), 200)]
    assert again == [d.doc_id for d in docs[:200]] and other != again
    assert "PSF-2.0" in src.licence and "CC BY-SA 4.0" in src.licence and "public domain" in src.licence


def test_stdlib_files_leave_out_tests_and_huge_files(tmp_path):
    for rel, size in [("os.py", 10), ("json/decoder.py", 10), ("test/test_os.py", 10), ("idlelib/idle_test/x.py", 10),
                      ("test_x.py", 10), ("big.py", 300_000), ("encodings/cp1252.py", 10)]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x = 1\n" * (size // 6 + 1))
    assert [p.relative_to(tmp_path).as_posix() for p in stdlib_files(tmp_path)] == ["json/decoder.py", "os.py"]
    assert len(stdlib_files()) > 100


def test_code_chunks_cut_at_blank_lines():
    text = "\n\n".join(f"def f{i}():\n    return {i}" for i in range(100))
    chunks = code_chunks(text, size=200)
    assert "\n\n".join(chunks) == text
    assert all(len(c) <= 200 for c in chunks) and len(chunks) > 5


def test_interleave_stops_when_a_part_runs_out():
    a = iter([Document(f"a{i}", "x" * 10) for i in range(100)])
    b = iter([Document(f"b{i}", "y" * 10) for i in range(3)])
    ids = [d.doc_id for d in interleave({"a": a, "b": b}, {"a": 0.75, "b": 0.25})]
    assert ids.count("b0") == 1 and sum(i.startswith("b") for i in ids) == 3
    assert 9 <= sum(i.startswith("a") for i in ids) <= 10
