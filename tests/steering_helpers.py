"""Helpers of the steering tests: SAEs with known answers, a trained SAE, a block-output recorder, a feature DB."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from featurescope.sae import SAE, SAEConfig

LAYER = 9
PROMPT = "The Golden Gate Bridge is"
_TRAINED: dict[str, SAE] = {}


def orthogonal_sae(d: int = 640, n: int = 8, *, bias: float = 100.0, scale: float = 1 / 200, layer: int = LAYER,
                   seed: int = 0) -> SAE:
    """A ReLU SAE whose features always fire, with orthonormal rows and W_enc = W_dec.

    f_i(x) = q_i · x·scale + bias (> 0 for residual norms ~5,000), so f_i(x + δ·d_i) = f_i(x) + δ exactly and
    f_j(x + δ·d_i) = f_j(x) for j ≠ i: after a clamp, f_i reads back exactly c and the others do not move.
    """
    sae = SAE.create(SAEConfig(d_in=d, d_sae=n, architecture="relu", apply_b_dec_to_input=False, model="default",
                               layer=layer))
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sae.W_enc_rows.copy_(q.T)
        sae.W_dec.copy_(q.T)
        sae.b_enc.fill_(bias)
        sae.b_dec.zero_()
        sae.input_scale.fill_(scale)
    return sae


def trained_sae(store: Path, out: Path) -> SAE:
    """A small TopK SAE (256 features, k 16) trained on the session's small store, trained once per session."""
    from featurescope.train import TrainConfig, train

    key = str(store)
    if key not in _TRAINED:
        cfg = TrainConfig(activations=str(store), out=str(out), features=256, k=16, batch_size=500, epochs=3,
                          checkpoint_every=0, checkpoint_seconds=0, seed=0, device="cpu")
        _TRAINED[key] = train(cfg, progress=False).sae.eval()
    return _TRAINED[key]


class Recorder:
    """Forward hook that keeps a copy of every output of a block."""

    def __init__(self) -> None:
        self.outputs: list[Tensor] = []

    def __call__(self, module: nn.Module, args: object, output: object) -> None:
        h = output[0] if isinstance(output, tuple) else output
        self.outputs.append(h.detach().clone())  # type: ignore[union-attr]


def make_db(path: Path, sae: SAE, max_acts: Tensor, *, top_tokens: dict[int, list[int]] | None = None,
            model: str = "default") -> Path:
    """A minimal feature database for `sae`: meta, per-feature max activations, decoder, some logit effects."""
    from featurescope.featuredb.core import FORMAT, VERSION, create_db

    with create_db(path) as db:
        db.meta({"format": FORMAT, "version": VERSION, "model": model, "layer": sae.cfg.layer,
                 "d_sae": sae.cfg.d_sae, "d_in": sae.cfg.d_in})
        db.insert("features", ("id", "count", "density", "max", "decoder_norm"),
                  ((i, 1, 0.1, float(m), 1.0) for i, m in enumerate(max_acts.tolist())))
        db.decoder(torch.nn.functional.normalize(sae.W_dec.detach(), dim=1))
        rows = [(f, 1, r, t, 1.0 - r / 100) for f, toks in (top_tokens or {}).items() for r, t in enumerate(toks)]
        db.insert("logit_effects", ("feature", "sign", "rank", "token", "value"), rows)
        db.insert("tokens", ("id", "text"), ((t, f"tok{t}") for t in sorted({r[3] for r in rows})))
    return path
