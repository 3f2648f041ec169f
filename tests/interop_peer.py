"""Run by the peers' Python (.venv-peers, with sae-lens and eai-sparsify) for tests/sae/test_interop.py.

Usage: python interop_peer.py JOBS.json. Every job reads the fixed input X (.npy, raw units) and writes
`<out>.f.npy` (dense feature activations) and `<out>.xhat.npy` (reconstruction), computed by the peer
library's own code. "run_*" jobs load a folder that featurescope exported; "make_*" jobs first create an
SAE with the peer's own classes, save it with the peer's own save function, then run it.
Not collected by pytest (no test_ prefix); never imported by featurescope.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_grad_enabled(False)


def save(out: str, f: torch.Tensor, x_hat: torch.Tensor) -> None:
    np.save(out + ".f.npy", f.float().numpy())
    np.save(out + ".xhat.npy", x_hat.float().numpy())


def run_saelens(folder: str, x: torch.Tensor, out: str) -> None:
    from sae_lens import SAE

    sae = SAE.load_from_disk(folder)
    f = sae.encode(x)
    save(out, f, sae.decode(f))


def sparsify_outputs(coder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top_acts, top_indices, _ = coder.encode(x)
    f = torch.zeros(x.shape[0], coder.num_latents).scatter(-1, top_indices, top_acts)
    return f, coder.decode(top_acts, top_indices)


def run_sparsify(folder: str, x: torch.Tensor, out: str) -> None:
    from sparsify import SparseCoder

    save(out, *sparsify_outputs(SparseCoder.load_from_disk(folder), x))


def randomize(sae, g: torch.Generator, d_in: int, scale: float, norms: bool) -> None:
    """Non-trivial weights for raw inputs of norm ~1/scale: pre-activations O(1), biases nonzero."""
    d_sae = sae.W_dec.shape[0]
    sae.W_enc.data = (torch.randn(d_in, d_sae, generator=g) * scale).contiguous()
    sae.b_enc.data = torch.randn(d_sae, generator=g) * 0.3
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    if norms:
        w_dec = w_dec * (0.5 + torch.rand(d_sae, 1, generator=g))
    sae.W_dec.data = w_dec / scale / d_in**0.5
    sae.b_dec.data = torch.randn(d_in, generator=g) * 0.3 / scale / d_in**0.5


def make_saelens(
    kind: str, folder: str, x: torch.Tensor, out: str, d_sae: int, k: int, scale: float
) -> None:
    from sae_lens import (
        SAE,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening

    g = torch.Generator().manual_seed(sum(map(ord, kind)))
    d_in = x.shape[1]
    path = Path(folder)
    if kind in ("standard", "standard_no_b_dec"):
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=kind == "standard"))
        randomize(sae, g, d_in, scale, norms=True)
        sae.save_model(folder)
    elif kind == "topk_rescaled":  # TopK whose selection uses pre·‖W_dec,i‖ (SAELens' training default)
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=True))
        randomize(sae, g, d_in, scale, norms=True)
        sae.save_model(folder)
    elif kind == "jumprelu":  # Gemma Scope style: no b_dec subtraction; some thresholds <= 0
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))
        randomize(sae, g, d_in, scale, norms=True)
        thr = torch.rand(d_sae, generator=g) * 0.4
        thr[:5] = torch.tensor([-0.2, -0.01, 0.0, 0.0, -1.0])
        sae.threshold.data = thr
        sae.save_model(folder)
    elif kind in ("batchtopk_inference", "batchtopk_checkpoint"):
        train = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
        randomize(train, g, d_in, scale, norms=True)
        train.topk_threshold = torch.tensor(0.25, dtype=torch.double)
        train.save_inference_model(str(path.with_name(path.name + "_ref")))
        if kind == "batchtopk_inference":
            train.save_inference_model(folder)
        else:
            train.save_model(folder)
        # reference: SAELens' own inference form of this SAE (a JumpReLU with the batch threshold)
        sae = SAE.load_from_disk(str(path.with_name(path.name + "_ref")))
    elif kind == "topk_scaled_checkpoint":  # mid-training checkpoint: weights expect scaled inputs
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k,
                                                    normalize_activations="expected_average_only_in"))
        randomize(sae, g, d_in, 1.0 / d_in**0.5, norms=True)
        scaler = ActivationScaler(scaling_factor=scale * d_in**0.5)
        sae.save_model(folder)
        scaler.save(str(path / "activation_scaler.json"))
        f = sae.encode(scaler.scale(x))
        save(out, f, scaler.unscale(sae.decode(f)))
        return
    elif kind == "whitened_checkpoint":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae,
                                                            normalize_activations="covariance_whitening"))
        randomize(sae, g, d_in, 1.0 / d_in**0.5, norms=True)
        q, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
        lam = 0.5 + torch.rand(d_in, generator=g, dtype=torch.float64)
        whitening = ActivationWhitening(mean=torch.randn(d_in, generator=g, dtype=torch.float64),
                                        matrix=q * lam.rsqrt(), inverse_matrix=lam.sqrt()[:, None] * q.T)
        scaler = ActivationScaler(scaling_factor=scale * d_in**0.5, whitening=whitening)
        sae.save_model(folder)
        scaler.save(str(path / "activation_scaler.json"))
        f = sae.encode(scaler.scale(x))
        save(out, f, scaler.unscale(sae.decode(f)))
        return
    elif kind == "pre6_topk":  # a SAELens 3.x-5.x style config, read back by SAELens' own upgrade path
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
        randomize(sae, g, d_in, scale, norms=False)
        sae.save_model(folder)
        old = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "model_name": "gpt2",
               "hook_name": "blocks.3.hook_resid_pre", "hook_layer": 3, "activation_fn_str": "topk",
               "activation_fn_kwargs": {"k": k}, "apply_b_dec_to_input": True,
               "normalize_activations": "none", "finetuning_scaling_factor": False,
               "sae_lens_training_version": "4.4.1"}
        (path / "cfg.json").write_text(json.dumps(old))
        sae = SAE.load_from_disk(folder)
    else:
        raise ValueError(kind)
    f = sae.encode(x)
    save(out, f, sae.decode(f))


def make_sparsify(
    kind: str, folder: str, x: torch.Tensor, out: str, d_sae: int, k: int, scale: float
) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    g = torch.Generator().manual_seed(7)
    d_in = x.shape[1]
    if kind == "num_latents":
        cfg = SparseCoderConfig(k=k, num_latents=d_sae)
    else:  # width from expansion_factor, as sparsify's default configs
        cfg = SparseCoderConfig(k=k, expansion_factor=d_sae // d_in)
    coder = SparseCoder(d_in, cfg)
    coder.encoder.weight.data = torch.randn(coder.num_latents, d_in, generator=g) * scale
    coder.encoder.bias.data = torch.randn(coder.num_latents, generator=g) * 0.3
    coder.W_dec.data = torch.randn(coder.num_latents, d_in, generator=g) / scale / d_in
    coder.b_dec.data = torch.randn(d_in, generator=g) * 0.3 / scale / d_in**0.5
    coder.save_to_disk(folder)
    save(out, *sparsify_outputs(SparseCoder.load_from_disk(folder), x))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    x = torch.from_numpy(np.load(spec["x"]))
    for job in spec["jobs"]:
        op = job["op"]
        if op == "run_saelens":
            run_saelens(job["folder"], x, job["out"])
        elif op == "run_sparsify":
            run_sparsify(job["folder"], x, job["out"])
        elif op == "make_saelens":
            make_saelens(job["kind"], job["folder"], x, job["out"], spec["d_sae"], spec["k"], spec["scale"])
        elif op == "make_sparsify":
            make_sparsify(job["kind"], job["folder"], x, job["out"], spec["d_sae"], spec["k"], spec["scale"])
        else:
            raise ValueError(op)
    print("ok", len(spec["jobs"]))


if __name__ == "__main__":
    main()
