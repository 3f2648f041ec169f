"""EleutherAI sparsify folders (cfg.json + sae.safetensors, the same file names as ours): read and write.

Checked against eai-sparsify 1.3.3 (`sparsify/sparse_coder.py`, `sparsify/config.py`,
`sparsify/fused_encoder.py`, `sparsify/trainer.py`). sparsify's SparseCoder computes
f = TopK_k(ReLU(encoder(x − b_dec))) and x̂ = Σ f_i W_dec,i + b_dec, with no input normalisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from featurescope.errors import FeaturescopeError
from featurescope.sae.base import SAE
from featurescope.sae.config import SAEConfig
from featurescope.sae.files import (
    DTYPE_NAMES,
    expect_shapes,
    positive_int,
    read_cfg,
    read_tensors,
)
from featurescope.sae.interop import (
    PlainWeights,
    build_sae,
    fold_b_dec_into_b_enc,
    layer_from_hook,
    unscaled_weights,
)

WEIGHTS_FILE = "sae.safetensors"
RUN_CONFIG = "config.json"
"""What sparsify's trainer writes beside the per-hookpoint folders (its TrainConfig / RunConfig)."""
EXPANSION_FACTOR = 32
K = 32
"""sparsify's defaults (SparseCoderConfig) for fields an old cfg.json may lack."""


def is_sparsify(cfg: dict[str, Any]) -> bool:
    """Whether a cfg.json is sparsify's: d_in and SparseCoderConfig fields, no d_sae, no format name."""
    fields = ("num_latents", "expansion_factor", "k", "activation", "normalize_decoder")
    return "d_in" in cfg and "d_sae" not in cfg and "format" not in cfg and any(f in cfg for f in fields)


def load_sparsify(folder: Path, cfg: dict[str, Any]) -> SAE:
    """Read a sparsify SparseCoder folder as our topk SAE (refusing what it cannot represent)."""
    if cfg.get("transcode", False):
        raise FeaturescopeError(f"{folder}: a sparsify transcoder (transcode=true) is not an autoencoder; "
                                "featurescope reads sparse autoencoders only")
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise FeaturescopeError(f"{folder}: sparsify activation {activation!r} is not supported (only topk)")
    path = folder / WEIGHTS_FILE
    tensors = read_tensors(path)
    if cfg.get("skip_connection", False) or "W_skip" in tensors:
        raise FeaturescopeError(f"{folder}: sparsify skip connection (W_skip) is not supported: "
                                "featurescope SAEs have no linear skip term")
    d_in = positive_int(folder, cfg, "d_in")
    d_sae = cfg.get("num_latents") or d_in * cfg.get("expansion_factor", EXPANSION_FACTOR)
    d_sae = positive_int(folder, {"num_latents": d_sae}, "num_latents")
    k = positive_int(folder, {"k": cfg.get("k", K)}, "k")
    if "W_dec" not in tensors:
        raise FeaturescopeError(f"{path}: no decoder (W_dec); an encoder-only sparse coder cannot be loaded")
    expect_shapes(path, tensors, {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,),
                                  "W_dec": (d_sae, d_in), "b_dec": (d_in,)})
    hook, layer, model = _provenance(folder)
    extra = {"source": "sparsify", "normalize_decoder": bool(cfg.get("normalize_decoder", True)),
             "multi_topk": bool(cfg.get("multi_topk", False))}
    sae_cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k, apply_b_dec_to_input=True,
                        model=model, layer=layer, hook=hook, extra=extra)
    w = PlainWeights(tensors["encoder.weight"], tensors["encoder.bias"], tensors["W_dec"], tensors["b_dec"],
                     None)
    return build_sae(sae_cfg, w)


def _provenance(folder: Path) -> tuple[str | None, int | None, str | None]:
    """Hookpoint (the folder's name, if a layer name or under a trainer run config), its layer, the model."""
    layer = layer_from_hook(folder.name)
    run_cfg = folder.parent / RUN_CONFIG
    if not run_cfg.is_file():
        return (folder.name if layer is not None else None), layer, None
    try:
        run = read_cfg(run_cfg)
    except FeaturescopeError:
        run = {}
    model = run.get("model") if isinstance(run.get("model"), str) else None
    return folder.name, layer, model


def sparsify_files(sae: SAE) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """cfg.json and sae.safetensors contents of a topk `sae` for sparsify's SparseCoder (raw units)."""
    c = sae.cfg
    if c.architecture != "topk":
        raise FeaturescopeError(
            f"sparsify has only TopK sparse coders; a {c.architecture} SAE can be exported to saelens "
            "(relu, topk, batchtopk, jumprelu) but to sparsify only topk")
    dtype = sae.W_dec.dtype
    if dtype not in DTYPE_NAMES:
        raise FeaturescopeError(f"sparsify cannot store dtype {dtype}")
    w = unscaled_weights(sae)
    if not c.apply_b_dec_to_input:  # sparsify always encodes x − b_dec
        w = fold_b_dec_into_b_enc(w)
    tensors = {"encoder.weight": w.W_enc_rows, "encoder.bias": w.b_enc, "W_dec": w.W_dec, "b_dec": w.b_dec}
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, c.d_sae // c.d_in),
        "normalize_decoder": False,
        "num_latents": c.d_sae,
        "k": c.k,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": c.d_in,
    }
    return cfg, {k: v.to(dtype).contiguous() for k, v in tensors.items()}
