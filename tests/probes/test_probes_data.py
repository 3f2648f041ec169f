"""The shipped probe sets and parallel sentences, their loaders, and one-line errors for bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from featurescope.corpus import BIBLE_TRANSLATIONS
from featurescope.errors import FeaturescopeError
from featurescope.probes.parallel import PARALLEL, bible_segments, load_parallel, parallel_languages, parse_langs
from featurescope.probes.sets import load_probe_set

SAFETY_CATEGORIES = ["unsafe_code", "bias", "sycophancy", "deception", "power_seeking", "dangerous_info"]


def test_safety_set_is_balanced_and_matched():
    s = load_probe_set("safety")
    assert s.name == "safety" and s.categories == SAFETY_CATEGORIES
    for c in SAFETY_CATEGORIES:
        items = s.category(c)
        counts = Counter(t.label for t in items)
        assert counts[1] >= 40 and counts[0] >= 40
        groups = Counter(t.group for t in items)
        assert set(groups.values()) == {2}  # every positive has exactly one matched negative
        for g in groups:
            assert sorted(t.label for t in items if t.group == g) == [0, 1]
    texts = [t.text for t in s.items]
    assert len(texts) == len(set(texts))


def test_parallel_sentences_cover_five_languages():
    assert parallel_languages(PARALLEL) >= {"en", "fr", "de", "es", "zh"}
    segs = load_parallel(PARALLEL, ["en", "fr", "de", "es", "zh"])
    assert len(segs) >= 60 and len({s.ref for s in segs}) == len(segs)
    topics = Counter(json.loads(line)["topic"] for line in PARALLEL.read_text(encoding="utf-8").splitlines())
    assert {"place", "person", "object", "idea"} <= set(topics)
    eiffel = next(s for s in segs if s.ref == "eiffel-tower")
    assert "Eiffel" in eiffel.texts["fr"] and "埃菲尔铁塔" in eiffel.texts["zh"]
    assert any("金门大桥" in s.texts["zh"] for s in segs)


def test_bible_segments_are_aligned_and_seeded():
    a = bible_segments(["en", "zh"], 5, seed=0)
    assert len(a) == 5 and all(s.source == "bible" and set(s.texts) == {"en", "zh"} for s in a)
    assert [s.ref for s in a] == [s.ref for s in bible_segments(["en", "zh"], 5, seed=0)]
    assert [s.ref for s in a] != [s.ref for s in bible_segments(["en", "zh"], 5, seed=1)]


def test_language_errors():
    assert parse_langs("en, fr,zh") == ["en", "fr", "zh"]
    with pytest.raises(FeaturescopeError, match="unknown language 'xx'") as e:
        parse_langs("en,xx")
    assert "available: " + ", ".join(BIBLE_TRANSLATIONS) in str(e.value)
    with pytest.raises(FeaturescopeError, match="at least two"):
        parse_langs("en")
    with pytest.raises(FeaturescopeError, match="given twice"):
        parse_langs("en,fr,en")


def _write(tmp_path, lines):
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _good(n=4):
    return [json.dumps({"category": "c", "label": lab, "group": i, "text": f"text {i} {lab}"})
            for i in range(n) for lab in (1, 0)]


@pytest.mark.parametrize(("line", "message"), [
    ('{"category": "c", "label": 1, "text": ', ":9: not valid JSON"),
    ('["c", 1, "x"]', ":9: expected a JSON object"),
    ('{"category": "c", "label": 2, "text": "x"}', ':9: "label" must be 1 (positive) or 0'),
    ('{"category": "c", "label": "1", "text": "x"}', ':9: "label" must be 1'),
    ('{"category": "c", "label": 1.0, "text": "x"}', ':9: "label" must be 1'),
    ('{"category": "", "label": 1, "text": "x"}', ':9: "category" must be a non-empty string'),
    ('{"category": "c", "label": 1, "text": "  "}', ':9: "text" must be a non-empty string'),
    ('{"category": "c", "label": 1, "text": "x", "group": [1]}', ':9: "group" must be a string or an integer'),
])
def test_malformed_probe_lines_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, [*_good(), line])
    with pytest.raises(FeaturescopeError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_probe_set(path)
    assert str(e.value).startswith(path)


def test_probe_set_rules(tmp_path):
    ok = load_probe_set(_write(tmp_path, ["# a comment", "", *_good()]))
    assert ok.name == "set" and len(ok.items) == 8 and ok.items[0].group == "c/0"
    with pytest.raises(FeaturescopeError, match="3 positives and 3 negatives; it needs at least 4"):
        load_probe_set(_write(tmp_path, _good(3)))
    with pytest.raises(FeaturescopeError, match="same text twice"):
        load_probe_set(_write(tmp_path, [*_good(), _good()[0]]))
    with pytest.raises(FeaturescopeError, match="no such probe set"):
        load_probe_set(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FeaturescopeError, match="has no category 'x'"):
        ok.category("x")
    unpaired = load_probe_set(_write(tmp_path, [json.dumps({"category": "c", "label": i % 2, "text": f"t{i}"})
                                                for i in range(8)]))
    assert len({t.group for t in unpaired.items}) == 8


def test_parallel_file_errors(tmp_path):
    path = tmp_path / "par.jsonl"
    path.write_text('{"id": "a", "en": "Hello.", "fr": "Bonjour."}\n{"id": "b", "en": "Bye."}\n', encoding="utf-8")
    with pytest.raises(FeaturescopeError, match=r"par.jsonl:2: item 'b' has no text in fr"):
        load_parallel(path, ["en", "fr"])
    path.write_text('{"id": "a", "en": "Hi", "fr": "Salut"}\n{"id": "a", "en": "Hi", "fr": "Salut"}\n',
                    encoding="utf-8")
    with pytest.raises(FeaturescopeError, match="appears twice"):
        load_parallel(path, ["en", "fr"])
