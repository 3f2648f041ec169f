"""SAEs with known answers shared by the tests of several packages."""

from __future__ import annotations

import torch

from featurescope.sae import SAE, SAEConfig


def exact_relu_sae(d: int, layer: int = 9) -> SAE:
    """relu(x) − relu(−x) = x: a ReLU SAE with features ±e_i reconstructs perfectly."""
    sae = SAE.create(SAEConfig(d_in=d, d_sae=2 * d, architecture="relu", apply_b_dec_to_input=False,
                               model="default", layer=layer))
    eye = torch.eye(d)
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
        sae.W_enc_rows.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.input_scale.fill_(1 / 5000)
    return sae
