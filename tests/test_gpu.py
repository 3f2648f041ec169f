"""CUDA paths: sparse kernels, top-k, every architecture with bf16 autocast, harvest, NCCL, two ranks on a GPU.

Skipped without a GPU (`make test-gpu` runs only these). `FEATURESCOPE_TEST_GPU=cpu` runs the ones that do not
need CUDA itself on the CPU, to check the tests' own logic on a machine without a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from distributed_helpers import free_port, run_ranks
from featurescope.activations import ActivationStore, NpySource, TensorSource
from featurescope.errors import FeaturescopeError
from featurescope.sae import SAE
from featurescope.sae.kernels import Pattern, sparse_dot, sparse_sum, topk_flat, topk_rows
from featurescope.synthetic import make_synthetic, recovery
from featurescope.train import TrainConfig, train

DEVICE = os.environ.get("FEATURESCOPE_TEST_GPU", "cuda")
CUDA = DEVICE.startswith("cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(CUDA and not torch.cuda.is_available(), reason="needs a CUDA GPU")]
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA itself (NCCL, autocast)")


# -- kernels ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_kernels_match_dense_products_and_gradients(dtype):
    g = torch.Generator().manual_seed(0)
    n, d, m, k = 300, 64, 1024, 16
    x = torch.randn(n, d, generator=g).to(DEVICE, dtype).requires_grad_()
    W = torch.randn(m, d, generator=g).to(DEVICE, dtype).requires_grad_()
    b = torch.randn(m, generator=g).to(DEVICE, dtype).requires_grad_()
    idx = torch.stack([torch.randperm(m, generator=g)[:k] for _ in range(n)]).to(DEVICE)
    p = Pattern.from_topk(idx)
    pre = sparse_dot(x, W, b, p)
    out = sparse_sum(pre.relu(), W, p)
    (out.float().pow(2).sum() + pre.float().sum()).backward()
    fast = [t.grad.float().clone() for t in (x, W, b)]
    for t in (x, W, b):
        t.grad = None

    mask = torch.zeros(n, m, device=DEVICE, dtype=dtype).scatter(1, idx, 1.0)
    dense_pre = (x.float() @ W.float().T + b.float()) * mask.float()
    dense_out = dense_pre.relu() @ W.float()
    (dense_out.pow(2).sum() + dense_pre.sum()).backward()
    tol = {"atol": 1e-3, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 0.5, "rtol": 3e-2}
    torch.testing.assert_close(pre.float(), dense_pre.gather(1, idx).reshape(-1), **tol)
    torch.testing.assert_close(out.float(), dense_out, **tol)
    for got, t in zip(fast, (x, W, b), strict=True):
        scale = float(t.grad.float().abs().max())
        assert float((got - t.grad.float()).abs().max()) <= (1e-4 if dtype == torch.float32 else 3e-2) * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_top_k_with_ties_is_the_same_choice_as_on_the_cpu(dtype):
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(-30, 30, (512, 4096), generator=g).to(dtype)  # many exact ties
    for k in (8, 32, 100):
        cpu = topk_rows(scores, k).sort(-1).values
        gpu = topk_rows(scores.to(DEVICE), k).sort(-1).values.cpu()
        assert torch.equal(cpu, gpu), k
    for k in (50, 4096, 65536):  # BatchTopK's selection over the whole batch
        assert torch.equal(topk_flat(scores, k).sort().values, topk_flat(scores.to(DEVICE), k).sort().values.cpu())


# -- training -----------------------------------------------------------------------------------------------
D, N_TRUE, FEATURES, ROWS, HELDOUT = 32, 64, 128, 50_000, 8192
SETTINGS = {"topk": {"k": 4}, "batchtopk": {"k": 4}, "jumprelu": {},
            "relu": {"sparsity_coefficient": 2.0, "lr": 1e-2}}


@pytest.fixture(scope="module")
def synthetic() -> tuple[torch.Tensor, torch.Tensor]:
    syn = make_synthetic(ROWS + HELDOUT, D, N_TRUE, mean_active=4, seed=1)
    return syn.data * (5000.0 / syn.data.norm(dim=1).mean()), syn.true_features


def _fvu(sae: SAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    return float((x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@pytest.mark.parametrize("autocast", [False, pytest.param(True, marks=needs_cuda)])
@pytest.mark.parametrize("arch", list(SETTINGS))
def test_every_architecture_learns_the_true_features_on_the_gpu(synthetic, arch, autocast, tmp_path):
    x, true = synthetic
    cfg = TrainConfig(out=str(tmp_path), arch=arch, features=FEATURES, batch_size=512, epochs=3, device=DEVICE,
                      autocast=autocast, **SETTINGS[arch])
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    sae = train(cfg, source=TensorSource(x[:ROWS]), progress=False).sae  # handed back on the CPU
    if CUDA:  # it trained there: at least the batch buffer and the SAE's weights with Adam's state
        assert torch.cuda.max_memory_allocated() > (ROWS * D + 3 * FEATURES * D) * 4
    assert recovery(sae.W_dec, true).hungarian >= 0.9
    fvu = _fvu(sae, x[ROWS:])
    assert fvu < 0.3
    assert _fvu(sae.to(DEVICE), x[ROWS:].to(DEVICE)) == pytest.approx(fvu, rel=1e-3, abs=1e-5)
    assert _fvu(SAE.load(tmp_path), x[ROWS:]) == pytest.approx(fvu, rel=1e-6, abs=1e-7)  # the saved folder


def test_gpu_training_matches_cpu_training(synthetic, tmp_path):
    x, _ = synthetic
    common = dict(arch="topk", features=FEATURES, k=4, batch_size=512, select_dtype="float32", max_rows=20_000)
    src = TensorSource(x[:ROWS])
    gpu = train(TrainConfig(out=str(tmp_path / "gpu"), device=DEVICE, **common), source=src, progress=False).sae
    cpu = train(TrainConfig(out=str(tmp_path / "cpu"), device="cpu", **common), source=src, progress=False).sae
    held = x[ROWS:]
    assert _fvu(gpu, held) == pytest.approx(_fvu(cpu, held), rel=0.02)
    cos = torch.nn.functional.cosine_similarity(gpu.W_dec.detach(), cpu.W_dec.detach(), dim=1)
    assert float(cos.mean()) > 0.99


# -- harvest ----------------------------------------------------------------------------------------------
def _tiny_llama(folder: Path, texts: list[str]) -> None:
    """A 2-layer random Llama with a word-level tokenizer trained on `texts` (everything built offline)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)


def test_harvest_on_the_gpu_equals_the_cpu_in_fp32_and_is_close_in_bf16(tmp_path):
    from featurescope.harvest import HarvestConfig, harvest

    g = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(g.choice(words, size=int(g.integers(20, 80)))) for _ in range(200)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(texts))
    _tiny_llama(tmp_path / "model", texts)
    stores = {}
    for name, device, model_dtype in (("cpu", "cpu", "float32"), ("fp32", DEVICE, "float32"),
                                      ("bf16", DEVICE, "bfloat16")):
        out = tmp_path / name
        harvest(HarvestConfig(out=str(out), model=str(tmp_path / "model"), layer=1, corpus=str(corpus), tokens=3000,
                              ctx_len=32, dtype="float32", device=device, model_dtype=model_dtype, shard_contexts=16),
                progress=False)
        stores[name] = ActivationStore(out)
    ref = stores["cpu"].rows(0, 3000)
    assert stores["fp32"].n_rows == stores["bf16"].n_rows == 3000
    torch.testing.assert_close(stores["fp32"].rows(0, 3000), ref, atol=1e-4, rtol=1e-4)
    rel = (stores["bf16"].rows(0, 3000) - ref).norm(dim=1) / ref.norm(dim=1)
    assert 0 < float(rel.mean()) < 0.03  # bf16 compute differs from fp32, but only by rounding


# -- distributed --------------------------------------------------------------------------------------------
@needs_cuda
def test_world_collectives_on_nccl(monkeypatch):
    import torch.distributed as dist

    from featurescope.distributed.world import join

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    for var in ("RANK", "LOCAL_RANK"):
        monkeypatch.setenv(var, "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    w = join("cuda", "auto")
    try:
        assert (w.backend, w.device.type) == ("nccl", "cuda") and w.cpu_group is not None
        t = torch.arange(6.0, device=w.device).reshape(3, 2)
        assert torch.equal(w.all_sum(t), t) and torch.equal(w.gather_rows(t), t)
        assert w.gather_json({"a": [1, 2]}) == [{"a": [1, 2]}] and w.agree(True)
        with pytest.raises(OSError):
            w.on_main(lambda: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(FeaturescopeError, match="bad"):
            w.on_main(lambda: (_ for _ in ()).throw(FeaturescopeError("bad")))
    finally:
        w.close()
    assert not dist.is_initialized()


@pytest.mark.parametrize("sharded", [False, True])
def test_two_ranks_on_one_gpu_train_like_one_process(tmp_path, sharded):
    """Two gloo ranks share the GPU (NCCL needs a GPU per rank): the CUDA side of DDP and feature sharding."""
    g = np.random.default_rng(1)
    x = np.abs(g.standard_normal((2048, 3))) @ g.standard_normal((3, 16)) + 0.05 * g.standard_normal((2048, 16))
    data = tmp_path / "x.npy"
    np.save(data, x.astype(np.float32))
    base = dict(activations=str(data), arch="topk", features=33 if sharded else 32, k=4, batch_size=256, seed=3,
                dead_tokens=256, checkpoint_seconds=0.0, device=DEVICE, select_dtype="float32")
    one = train(TrainConfig(**base, out=str(tmp_path / "one")), source=NpySource(data), progress=False)
    cfg = {**base, "out": str(tmp_path / "two"), "shard_features": sharded, "dist_backend": "gloo"}
    run_ranks([{"kind": "train", "cfg": cfg}])
    a, b = SAE.load(tmp_path / "one"), SAE.load(tmp_path / "two")
    assert a.cfg.to_json() == b.cfg.to_json() and one.steps == 8
    for name, t in a.tensors().items():
        assert float((t.double() - b.tensors()[name].double()).abs().max()) <= 1e-3, name
