"""Hostile or damaged input: control characters never reach the terminal, a damaged feature database
is one line and exit 2 (CLI) or 503 (server), and monitor keeps its exit codes."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from cli_helpers import run_main
from explorer_helpers import build_db
from featurescope.errors import FeaturescopeError
from featurescope.probes.monitor import parse_line
from featurescope.terminal import clean, dumps

ESCAPES = "\x1b[2J\x1b]52;c;aGVsbG8=\x1b\\\x1b]0;pwned\x07\x9b31m"


@pytest.fixture(scope="module")
def dbs(gemma, tmp_path_factory):
    """A hostile copy (escape codes in a label and a token) of the explorer test database, and its feature."""
    built = build_db(gemma, tmp_path_factory.getbasetemp())
    folder = tmp_path_factory.mktemp("robust")
    hostile = folder / "hostile.db"
    shutil.copy(built.db, hostile)
    con = sqlite3.connect(hostile)
    with con:
        feature = con.execute("SELECT feature FROM labels ORDER BY feature LIMIT 1").fetchone()[0]
        con.execute("UPDATE labels SET text = ? WHERE feature = ?", (f"label{ESCAPES}end", feature))
        con.execute("UPDATE tokens SET text = text || ?", (ESCAPES,))
    con.close()
    return built.db, hostile, int(feature)


def test_clean_removes_controls_and_dumps_escapes_them():
    assert clean(f"a{ESCAPES}b\tc\nd") == "a[2J]52;c;aGVsbG8=\\]0;pwned31mb\tc\nd"
    text = dumps({"t": ESCAPES})
    assert "\x1b" not in text and "\x9b" not in text and json.loads(text) == {"t": ESCAPES}  # data unchanged


def test_cli_never_prints_escape_codes(capsys, dbs):
    _, hostile, feature = dbs
    for args in (["top", "--by", "id", "-n", "300"], ["feature", str(feature)], ["neighbors", str(feature)],
                 ["search", "--label", "label"]):
        for extra in ([], ["--json"]):
            code, out, err = run_main(capsys, *args[:1], str(hostile), *args[1:], *extra)
            assert code == 0, err
            assert not set(out + err) & {"\x1b", "\x9b", "\x07"}, (args, extra)
            assert "label" in out or "neighbors" in args


CORRUPTIONS = {
    "truncated": lambda b: b[: len(b) // 2],
    "middle overwritten": lambda b: b[:8192] + b"\xa5" * 16384 + b[8192 + 16384:],
    "garbage tail": lambda b: b + b"\x00junk" * 100,
    "empty": lambda b: b"",
    "not sqlite": lambda b: b"SQLite format 2\x00" + b[16:],
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_damaged_database_is_one_line_and_exit_2(capsys, dbs, tmp_path, kind):
    good, _, _ = dbs
    bad = tmp_path / "bad.db"
    bad.write_bytes(CORRUPTIONS[kind](good.read_bytes()))
    for args in (["top"], ["feature", "1"], ["search", "--label", "x"], ["neighbors", "1"]):
        code, out, err = run_main(capsys, args[0], str(bad), *args[1:])
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("featurescope: error:"), (args, err)


def test_dropped_table_is_reported(capsys, dbs, tmp_path):
    bad = tmp_path / "bad.db"
    shutil.copy(dbs[0], bad)
    with sqlite3.connect(bad) as con:
        con.execute("DROP TABLE neighbours")
    code, _, err = run_main(capsys, "neighbors", str(bad), "1")
    assert code == 2 and "lacks tables neighbours" in err


@pytest.mark.parametrize("line", [
    '{"text": "\\ud800 lone"}', '{"text": "ok", "id": "\\udfff"}', "caf\udce9 au lait",  # \udce9: byte 0xE9 read
])
def test_monitor_rejects_undecodable_lines(line):
    with pytest.raises(FeaturescopeError, match="UTF-8|surrogate"):
        parse_line(line, "auto")
    assert parse_line('{"text": "caf\\u00e9"}', "auto") == ("café", None)


@pytest.mark.parametrize("args", [["steer", "--prompt", "x", "--feature", "0", "--clamp", "1e300", "--json"],
                                  ["steer", "--prompt", "x", "--feature", "0", "--clamp=-2e6x"],
                                  ["steer-sweep", "--prompt", "x", "--feature", "0", "--multiples", "1,1e7"]])
def test_steer_values_are_bounded_like_the_server(capsys, tmp_path, args):
    code, out, err = run_main(capsys, *args, "--sae", str(tmp_path / "no-sae"))
    assert code == 2 and out == "" and "too large (at most 1e+06" in err, err


def test_analyze_refuses_a_damaged_database_and_never_replaces_a_user_file(dbs, tmp_path):
    from featurescope.analysis.pipeline import _existing
    from featurescope.featuredb.core import FeatureStore

    good = dbs[0]
    with FeatureStore.open(good) as db:
        identity = db.meta["identity"]
    assert _existing(good, identity, False)  # a whole database of these settings: done
    bad = tmp_path / "bad.db"
    data = good.read_bytes()
    bad.write_bytes(data[:8192] + b"\xa5" * 16384 + data[8192 + 16384:])  # same size, pages overwritten
    with pytest.raises(FeaturescopeError, match="damaged"):
        _existing(bad, identity, False)
    assert not _existing(bad, identity, True)  # --overwrite rebuilds it
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(FeaturescopeError, match="not a feature database"):
        _existing(notes, identity, True)
