"""SAELens folders (cfg.json + sae_weights.safetensors): read them as our SAEs; write ours in their format.

Checked against sae-lens 6.54.12 (`sae_lens/saes/*.py`, `sae_lens/loading/pretrained_sae_loaders.py`,
`sae_lens/training/activation_scaler.py`); see docs/formats/sae.md for the mapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from featurescope._version import __version__
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
    fold_decoder_norms,
    fold_whitening,
    layer_from_hook,
    uniform_threshold,
    unscaled_weights,
)

WEIGHTS_FILE = "sae_weights.safetensors"
SCALER_FILE = "activation_scaler.json"
WHITENING_FILE = "activation_whitening.safetensors"
SAELENS_FORMAT_VERSION = "6.54.12"
"""The SAELens version whose format `export` writes (and this module was checked against)."""
READABLE = ("standard", "topk", "jumprelu", "batchtopk")
"""SAELens architectures we read ("batchtopk" is a training checkpoint; its inference form is jumprelu)."""
_ARCH_IN = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}
_ARCH_OUT = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}


def is_saelens(cfg: dict[str, Any]) -> bool:
    """Whether a cfg.json is SAELens': d_in and d_sae, no featurescope format name."""
    return "d_in" in cfg and "d_sae" in cfg and "format" not in cfg


def _architecture(folder: Path, cfg: dict[str, Any]) -> str:
    arch = cfg.get("architecture")
    if arch is None:  # before SAELens 6: a standard SAE unless activation_fn says topk
        act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
        arch = {"topk": "topk", "relu": "standard"}.get(act, f"standard with activation {act!r}")
    if arch not in READABLE:
        raise FeaturescopeError(
            f"{folder}: SAELens architecture {arch!r} is not supported (readable: {', '.join(READABLE)})")
    return str(arch)


def _input_map(folder: Path, cfg: dict[str, Any]) -> tuple[float, dict[str, Tensor] | None]:
    """The input scale and whitening (mean, matrix, inverse_matrix) the weights expect, from the config
    and the trainer's activation_scaler.json beside them (mid-training checkpoints are not folded)."""
    norm = cfg.get("normalize_activations", "none")
    if norm in (None, False, "none"):
        return 1.0, None
    if norm in ("layer_norm", "constant_norm_rescale"):
        raise FeaturescopeError(
            f"{folder}: normalize_activations={norm!r} rescales each input by its own norm; "
            "featurescope SAEs use one constant input scale and cannot represent it")
    if norm not in (True, "expected_average_only_in", "covariance_whitening"):
        raise FeaturescopeError(f"{folder}: unknown normalize_activations value {norm!r}")
    scaler = read_cfg(folder / SCALER_FILE) if (folder / SCALER_FILE).is_file() else {}
    scale = scaler.get("scaling_factor")
    whitening = None
    if (folder / WHITENING_FILE).is_file() and scaler.get("has_whitening", True):
        whitening = read_tensors(folder / WHITENING_FILE)
        d = positive_int(folder, cfg, "d_in")
        shapes = {"mean": (d,), "matrix": (d, d), "inverse_matrix": (d, d)}
        expect_shapes(folder / WHITENING_FILE, whitening, shapes)
    if norm == "covariance_whitening" and whitening is None:
        raise FeaturescopeError(
            f"{folder}: normalize_activations='covariance_whitening' but no {WHITENING_FILE} beside it; "
            "fold the whitening into the weights with SAELens first")
    if norm != "covariance_whitening" and scale is None:
        raise FeaturescopeError(
            f"{folder}: normalize_activations={norm!r} but no {SCALER_FILE} with a scaling_factor beside it, "
            "so the input scale the weights expect is unknown; fold it with SAELens "
            "(sae.fold_activation_norm_scaling_factor(s)) and save again")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0):
        raise FeaturescopeError(f"{folder / SCALER_FILE}: scaling_factor must be positive, got {scale!r}")
    return float(scale) if scale is not None else 1.0, whitening


def load_saelens(folder: Path, cfg: dict[str, Any]) -> SAE:
    """Read a SAELens SAE folder (inference save, training checkpoint or pre-6 config) as our SAE."""
    arch = _architecture(folder, cfg)
    meta = m if isinstance(m := cfg.get("metadata"), dict) else {}
    ours = o if isinstance(o := meta.get("featurescope"), dict) else {}
    d_in, d_sae = positive_int(folder, cfg, "d_in"), positive_int(folder, cfg, "d_sae")
    path = folder / WEIGHTS_FILE
    tensors = read_tensors(path)
    expect_shapes(path, tensors, {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in),
                                  "b_dec": (d_in,)})
    scaling = tensors.get("scaling_factor")  # pre-6 "finetuning scaling factor": f is multiplied by it
    if scaling is not None and not bool((scaling == 1).all()):
        raise FeaturescopeError(f"{path}: a finetuning scaling_factor other than 1 is not supported")
    d = torch.float64
    threshold = _threshold(path, arch, tensors, d_sae)
    w = PlainWeights(tensors["W_enc"].to(d).T, tensors["b_enc"].to(d), tensors["W_dec"].to(d),
                     tensors["b_dec"].to(d), None if threshold is None else threshold.to(d))
    if arch in ("topk", "batchtopk") and cfg.get("rescale_acts_by_decoder_norm", False):
        w = fold_decoder_norms(w)  # the threshold is already in units of pre·‖W_dec,i‖
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))
    scale, whitening = _input_map(folder, cfg)
    if whitening is not None:
        w = fold_whitening(w, whitening["mean"], whitening["matrix"], whitening["inverse_matrix"],
                           apply_b_dec)

    extra: dict[str, Any] = {"source": "saelens", "saelens_architecture": arch}
    ours_arch, k = _ARCH_IN[arch], None
    if arch == "topk":
        k = _int_k(folder, cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k")))
    elif arch == "batchtopk":
        k = _batch_k(folder, cfg.get("k"), extra)
    elif arch == "jumprelu" and w.threshold is not None:
        # a BatchTopK SAE saved for inference: one threshold for all features (ours, or SAELens' trainer)
        common = uniform_threshold(w.threshold)
        details = meta.get("training_architecture_details") or {}
        k_hint = ours.get("k") if ours.get("architecture") == "batchtopk" else (
            details.get("k") if meta.get("training_architecture") == "batchtopk" else None)
        if common is not None and k_hint is not None:
            ours_arch, k = "batchtopk", _batch_k(folder, k_hint, extra)
            w = w._replace(threshold=torch.tensor(common, dtype=d))
    if cfg.get("reshape_activations", "none") not in (None, "none"):
        extra["reshape_activations"] = cfg["reshape_activations"]
    if ours:  # written by our export: take provenance verbatim
        hook, layer, model = ours.get("hook"), ours.get("layer"), ours.get("model")
    else:
        hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
        layer, model = layer_from_hook(hook), meta.get("model_name") or cfg.get("model_name")
    try:
        sae_cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=ours_arch, k=k,
                            apply_b_dec_to_input=apply_b_dec, model=model, layer=layer, hook=hook,
                            extra=extra)
    except FeaturescopeError as e:
        raise FeaturescopeError(f"{folder}: {e}") from None
    return build_sae(sae_cfg, w, input_scale=scale)


def _threshold(path: Path, arch: str, tensors: dict[str, Tensor], d_sae: int) -> Tensor | None:
    """JumpReLU's `threshold` [d_sae] (or older `log_threshold`), BatchTopK checkpoints' `topk_threshold`."""
    if arch == "jumprelu":
        if "threshold" in tensors:
            expect_shapes(path, tensors, {"threshold": (d_sae,)})
            return tensors["threshold"]
        if "log_threshold" in tensors:  # older JumpReLU checkpoints
            expect_shapes(path, tensors, {"log_threshold": (d_sae,)})
            return tensors["log_threshold"].to(torch.float64).exp()
        raise FeaturescopeError(f"{path}: a JumpReLU SAE needs a threshold tensor")
    if arch == "batchtopk":
        if "topk_threshold" not in tensors:
            raise FeaturescopeError(f"{path}: a BatchTopK checkpoint needs a topk_threshold tensor")
        expect_shapes(path, tensors, {"topk_threshold": ()})
        return tensors["topk_threshold"]
    return None


def _int_k(folder: Path, k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | float) or k <= 0 or k != int(k):
        raise FeaturescopeError(f"{folder}: k must be a positive integer, got {k!r}")
    return int(k)


def _batch_k(folder: Path, k: Any, extra: dict[str, Any]) -> int:
    """BatchTopK's mean number of active features (a float in SAELens; only training uses it)."""
    if isinstance(k, bool) or not isinstance(k, int | float) or k <= 0:
        raise FeaturescopeError(f"{folder}: k must be a positive number, got {k!r}")
    if k != int(k):
        extra["saelens_k"] = k
    return max(1, round(k))


def saelens_files(sae: SAE) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """cfg.json and sae_weights.safetensors contents of `sae` in SAELens 6 inference format (raw units)."""
    c = sae.cfg
    arch = _ARCH_OUT[c.architecture]
    dtype = sae.W_dec.dtype
    if dtype not in DTYPE_NAMES:
        raise FeaturescopeError(f"SAELens cannot store dtype {dtype}")
    w = unscaled_weights(sae)
    tensors = {"W_enc": w.W_enc_rows.T, "b_enc": w.b_enc, "W_dec": w.W_dec, "b_dec": w.b_dec}
    if w.threshold is not None:
        tensors["threshold"] = w.threshold.expand(c.d_sae)
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    hook = c.hook or (f"blocks.{c.layer}.hook_resid_post" if c.layer is not None else None)
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": SAELENS_FORMAT_VERSION,
        "model_name": c.model,
        "hook_name": hook,
        "exported_by": f"featurescope {__version__}",
        "featurescope": {"architecture": c.architecture, "k": c.k, "layer": c.layer, "model": c.model,
                         "hook": c.hook},
    }
    if c.architecture == "batchtopk":
        metadata["training_architecture"] = "batchtopk"
        metadata["training_architecture_details"] = {"k": c.k}
    cfg: dict[str, Any] = {
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": DTYPE_NAMES[dtype],
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
        "architecture": arch,
    }
    if arch == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False
    return cfg, tensors
