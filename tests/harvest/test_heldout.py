"""Held-out data: whole documents held out at harvest, never read by `train`, measured on by `eval`."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from featurescope.activations import MANIFEST, ActivationStore, NpySource, open_source
from featurescope.atomic import read_json, write_json, write_safetensors
from featurescope.corpus import contexts, open_corpus
from featurescope.errors import FeaturescopeError
from featurescope.evaluate import EvalConfig, evaluate
from featurescope.harvest import HarvestConfig, harvest
from featurescope.harvest.heldout import DocumentPart, is_heldout_context, is_heldout_document, split_contexts
from featurescope.train import TrainConfig, train
from sae_helpers import exact_relu_sae

FRACTION = 0.25
TOKENS = 3000


@pytest.fixture(scope="module")
def split_store(gemma, tmp_path_factory) -> Path:
    """3,000 rows with a quarter of the documents held out, harvested in two runs (1,500 rows, then extended)."""
    out = tmp_path_factory.mktemp("split") / "acts"
    for tokens in (1500, TOKENS):
        harvest(HarvestConfig(out=str(out), tokens=tokens, shard_contexts=4, layer=9, heldout=FRACTION),
                model=gemma, progress=False)
    return out


def _stored(store: ActivationStore) -> tuple[torch.Tensor, torch.Tensor]:
    shards = [store.read_shard(i) for i in range(len(store.shards))]
    return torch.cat([s.tokens for s in shards]).long(), torch.cat([s.heldout for s in shards])


def test_document_choice_is_stable_and_of_the_asked_size():
    ids = [f"wiki-en:Title {i}" for i in range(20_000)]
    held = [d for d in ids if is_heldout_document(d, 0.05)]
    assert 0.045 < len(held) / len(ids) < 0.055
    assert held == [d for d in ids if is_heldout_document(d, 0.05)]  # a function of the id alone
    assert not any(is_heldout_document(d, 0.0) for d in ids[:100])
    flags = [is_heldout_context(i, 0.05) for i in range(1000)]
    assert sum(flags) == 50 and flags[0] and flags[20] and not any(flags[1:20])


def test_extended_store_keeps_the_split_of_the_context_stream(split_store, gemma):
    store = ActivationStore(split_store)
    tokens, held = _stored(store)
    stream = split_contexts(open_corpus("wiki-en"), gemma.tokenizer, ctx_len=128, bos_id=gemma.bos_id,
                            fraction=FRACTION)
    expected = list(itertools.islice(stream, len(tokens)))
    assert torch.equal(tokens, torch.tensor([c for c, _ in expected]))
    assert held.tolist() == [h for _, h in expected]
    assert 0.2 < float(held.float().mean()) < 0.3
    # held-out contexts are exactly the stream of held-out documents, training contexts that of the others
    for part in (True, False):
        docs = contexts(DocumentPart(open_corpus("wiki-en"), FRACTION, part), gemma.tokenizer, ctx_len=128,
                        bos_id=gemma.bos_id)
        assert torch.equal(tokens[held == part], torch.tensor(list(itertools.islice(docs, int((held == part).sum())))))
    m = read_json(split_store / MANIFEST)
    assert m["version"] == 2 and m["heldout"] == FRACTION
    assert sum(s["heldout_contexts"] for s in m["shards"]) == int(held.sum())


def test_training_never_reads_heldout_rows(split_store, tmp_path):
    whole, tr, ho = (ActivationStore(split_store, s) for s in ("all", "train", "heldout"))
    assert whole.n_rows == TOKENS and tr.n_rows + ho.n_rows == TOKENS and ho.n_rows == whole.heldout_rows > 0
    held_rows = {bytes(r.numpy().tobytes()) for r in ho.rows(0, ho.n_rows)}
    seen = torch.cat(list(tr.batches(256, seed=3)))
    assert len(seen) == tr.n_rows
    assert not any(bytes(r.numpy().tobytes()) in held_rows for r in seen)
    assert len({bytes(r.numpy().tobytes()) for r in seen} | held_rows) == TOKENS  # every row in one part
    cfg = TrainConfig(activations=str(split_store), out=str(tmp_path / "sae"), arch="topk", features=64, k=4,
                      batch_size=256, epochs=1, checkpoint_seconds=0.0)
    train(cfg, progress=False)
    assert read_json(tmp_path / "sae" / "train_config.json")["data"]["rows"] == tr.n_rows


def test_npy_holds_out_its_last_twentieth(tmp_path):
    data = np.arange(103 * 4, dtype=np.float32).reshape(103, 4)
    np.save(tmp_path / "a.npy", data)
    tr, ho = NpySource(tmp_path / "a.npy", split="train", chunk_size=10), open_source(tmp_path / "a.npy", "heldout")
    assert (tr.n_rows, ho.n_rows, tr.heldout_rows) == (98, 5, 5)
    assert torch.equal(torch.cat(list(tr.batches(7, shuffle=False))), torch.from_numpy(data[:98]))
    assert torch.equal(ho.rows(0, 5), torch.from_numpy(data[98:]))
    np.save(tmp_path / "tiny.npy", data[:19])
    with pytest.raises(FeaturescopeError, match="no heldout rows"):
        open_source(tmp_path / "tiny.npy", "heldout")


def test_eval_defaults_to_heldout_and_labels_in_sample(split_store, gemma, tmp_path):
    sae_dir = exact_relu_sae(640).save(tmp_path / "exact")
    held = ActivationStore(split_store).heldout_rows
    r = evaluate(EvalConfig(sae=str(sae_dir), activations=str(split_store), ce_contexts=2, ood_contexts=1),
                 model=gemma, progress=False)
    assert r.split == "heldout" and not r.in_sample and not r.notes
    assert r.reconstruction.rows == held and r.reconstruction.fvu < 1e-4
    assert r.ce.tokens == 2 * 127 and r.ce.loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert r.ood_ce is not None and r.ood_corpus == "probe-texts"
    assert r.ood_ce.loss_recovered == pytest.approx(1.0, abs=1e-3) and r.ood_ce.tokens == 127
    d = r.as_dict()
    assert d["ood_loss_recovered"] == r.ood_ce.loss_recovered and "held-out" in d["measured_on"]["dead_fraction"]
    assert "held-out contexts" in d["measured_on"]["loss_recovered"]
    # the CE contexts are the store's held-out ones
    tokens, flags = _stored(ActivationStore(split_store))
    from featurescope.evaluate.run import _store_contexts

    assert torch.equal(_store_contexts(ActivationStore(split_store), 2, "heldout"), tokens[flags][:2])
    with pytest.raises(FeaturescopeError, match="must be 0 or more"):
        evaluate(EvalConfig(sae=str(sae_dir), activations=str(split_store), ood_contexts=-1), model=gemma)
    ins = evaluate(EvalConfig(sae=str(sae_dir), activations=str(split_store), split="train", ce_contexts=0),
                   model=gemma, progress=False)
    assert ins.in_sample and ins.reconstruction.rows == TOKENS - held and "in-sample" in ins.notes[0]
    assert ins.ce is None and ins.ood_ce is None


def _as_version_1(store: Path, out: Path) -> Path:
    """A copy of `store` as the version-1 harvest wrote it: no held-out tensor, fields or setting."""
    shutil.copytree(store, out)
    m = read_json(out / MANIFEST)
    from safetensors.torch import load_file

    for s in m["shards"]:
        t = load_file(str(out / s["file"]))
        del t["heldout"]
        write_safetensors(out / s["file"], t, metadata={"format": "featurescope.activations"})
        s["bytes"] = (out / s["file"]).stat().st_size
        del s["heldout_contexts"], s["heldout_rows"]
    m["version"] = 1
    del m["heldout"]
    write_json(out / MANIFEST, m)
    return out


def test_version_1_store_is_read_and_eval_says_it_is_in_sample(split_store, gemma, tmp_path):
    old = ActivationStore(_as_version_1(split_store, tmp_path / "v1"))
    assert old.n_rows == TOKENS and old.heldout_rows == 0 and old.info.heldout == 0.0
    assert ActivationStore(old.path, "train").n_rows == TOKENS
    with pytest.raises(FeaturescopeError, match="no held-out part"):
        ActivationStore(old.path, "heldout")
    sae_dir = exact_relu_sae(640).save(tmp_path / "exact")
    done = run_cli("eval", str(sae_dir), "--activations", str(old.path), "--ce-contexts", "1", "--ood-corpus", "",
                   "--json", "-q")
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["in_sample"] and d["split"] == "train" and d["rows"] == TOKENS and "no held-out part" in d["notes"][0]
    assert "ood_loss_recovered" not in d and d["tokens"] == 127
    assert "training (in-sample) contexts" in d["measured_on"]["loss_recovered"]


def test_probe_texts_corpus_is_listed_and_long_enough_for_eval(gemma, capsys):
    from featurescope.cli import main

    assert main(["corpora"]) == 0 and "probe-texts" in capsys.readouterr().out
    docs = list(open_corpus("probe-texts").documents())
    assert len(docs) == 834 and len({d.doc_id for d in docs}) == len(docs)
    n = sum(1 for _ in contexts(open_corpus("probe-texts"), gemma.tokenizer, ctx_len=128, bos_id=gemma.bos_id))
    assert n >= 64  # eval's default number of out-of-domain contexts


@pytest.mark.parametrize("fraction", [-0.1, 0.6])
def test_heldout_fraction_out_of_range_is_refused(tmp_path, fraction):
    with pytest.raises(FeaturescopeError, match="`heldout` must be between 0 and 0.5"):
        harvest(HarvestConfig(out=str(tmp_path / "a"), tokens=10, heldout=fraction))
