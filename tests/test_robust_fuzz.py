"""Fuzz: random corruption of every artefact type gives a one-line error (or a clean read), never a
traceback, and never changes a user's file; random malformed requests are answered below 500."""

from __future__ import annotations

import json
import random
import shutil
from urllib.parse import quote

import pytest
import torch
from fastapi.testclient import TestClient

from cli_helpers import run_main
from explorer_helpers import build_db
from featurescope.activations import ActivationStore
from featurescope.errors import FeaturescopeError
from featurescope.probes.monitor import parse_line
from featurescope.sae import SAE, SAEConfig
from featurescope.server import create_app
from featurescope.synthetic import random_store

ROUNDS = 12


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One random corruption: truncate, flip bytes, overwrite a block, or append junk."""
    kind = rng.choice(("truncate", "flip", "block", "append"))
    if kind == "truncate" or not data:
        return data[: rng.randrange(len(data) + 1)]
    b = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "block":
        at = rng.randrange(len(b))
        b[at : at + 4096] = bytes(rng.randrange(256) for _ in range(min(4096, len(b) - at)))
    else:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(b)


def _assert_clean(code: int, _out: str, err: str) -> None:
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("featurescope: error:"), err


@pytest.fixture
def user_file(tmp_path):
    """A user's file beside the artefacts: no command may change it."""
    path = tmp_path / "user" / "notes.txt"
    path.parent.mkdir()
    path.write_text("my notes")
    yield path
    assert path.read_text() == "my notes"


def test_fuzz_sae_folders(capsys, tmp_path, user_file):
    good = SAE.create(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2), seed=0).save(tmp_path / "good")
    rng = random.Random(0)
    for i in range(ROUNDS):
        bad = tmp_path / f"bad{i}"
        shutil.copytree(good, bad)
        victim = bad / rng.choice(["cfg.json", "sae.safetensors"])
        victim.write_bytes(_mutate(victim.read_bytes(), rng))
        _assert_clean(*run_main(capsys, "info", str(bad)))
        _assert_clean(*run_main(capsys, "export", str(bad), "--format", "saelens", "--out", str(tmp_path / f"e{i}")))


def test_fuzz_activation_stores(capsys, tmp_path, user_file):
    good = tmp_path / "good"
    random_store(good, 8, ctx_len=16, d=8, shard_contexts=2)
    rng = random.Random(1)
    for i in range(ROUNDS):
        bad = tmp_path / f"bad{i}"
        shutil.copytree(good, bad)
        victim = rng.choice(sorted(bad.iterdir()))
        victim.write_bytes(_mutate(victim.read_bytes(), rng))
        _assert_clean(*run_main(capsys, "info", str(bad)))
        try:
            store = ActivationStore(bad)
            torch.cat(list(store.batches(16, seed=0)))
        except FeaturescopeError as e:
            assert "\n" not in str(e)


def test_fuzz_feature_databases(capsys, gemma, tmp_path_factory, tmp_path, user_file):
    good = build_db(gemma, tmp_path_factory.getbasetemp()).db
    rng = random.Random(2)
    data = good.read_bytes()
    for i in range(ROUNDS):
        bad = tmp_path / f"bad{i}.db"
        bad.write_bytes(_mutate(data, rng))
        for args in (["top"], ["feature", "3"], ["neighbors", "3"], ["search", "--label", "a"]):
            _assert_clean(*run_main(capsys, args[0], str(bad), *args[1:]))


def test_fuzz_monitor_lines():
    rng = random.Random(3)
    seeds = ['{"text": "a sentence", "id": 1}', "plain text line", '{"text": "caf\\u00e9 \\ud83d\\ude00"}']
    for _ in range(300):
        raw = _mutate(rng.choice(seeds).encode(), rng)
        line = raw.decode("utf-8", "surrogateescape").replace("\n", " ")
        try:
            text, _ = parse_line(line, "auto")
            text.encode("utf-8")  # what comes back can always be written out
        except FeaturescopeError as e:
            assert "\n" not in str(e)


def _random_value(rng: random.Random) -> object:
    return rng.choice([None, True, -1, 0, 2**63, 1e308, float("nan"), "", "x" * 5000, "\ud800", "5x", "-1e300x",
                       [1, 2], {"a": 1}, "<script>", "\x1b[2J"])


def _quoted(value: object) -> str:
    return quote(str(value)[:300].encode("utf-8", "surrogatepass"))


def test_fuzz_requests_are_never_500(gemma, tmp_path_factory):
    built = build_db(gemma, tmp_path_factory.getbasetemp())
    rng = random.Random(4)
    gets = ["/api/features", "/api/features/{v}", "/api/features/{v}/summary", "/api/features/{v}/neighbours",
            "/api/map", "/api/search/labels", "/api/features/{v}/probes", "/api/features/{v}/multilingual",
            "/feature/{v}", "/api/images/{v}.jpg", "/api/features/{v}/images"]
    posts = ["/api/search/text", "/api/steer", "/api/quality/ce"]
    params = ["n", "by", "q", "ascending", "offset", "kind"]
    with TestClient(create_app(built.db), base_url="http://127.0.0.1") as c:
        for _ in range(150):
            if rng.random() < 0.6:
                path = rng.choice(gets).format(v=rng.choice(["-1", "0", "99999999999999999999", "abc", "%00",
                                                             "1.5", "%ED%A0%80"]))
                query = "&".join(f"{rng.choice(params)}={_quoted(_random_value(rng))}"
                                 for _ in range(rng.randint(0, 3)))
                r = c.get(f"{path}?{query}")
            else:
                body = {k: _random_value(rng) for k in rng.sample(["text", "prompt", "features", "temperature", "n",
                                                                      "by", "max_new_tokens", "contexts"], 3)}
                if rng.random() < 0.5:
                    body["features"] = [{"feature": _random_value(rng), "value": _random_value(rng)}]
                raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
                if rng.random() < 0.2:
                    raw = raw[: rng.randrange(len(raw) + 1)]
                r = c.post(rng.choice(posts), content=raw, headers={"content-type": "application/json"})
            assert r.status_code < 500, (r.request.method, r.request.url, r.status_code, r.text[:300])

