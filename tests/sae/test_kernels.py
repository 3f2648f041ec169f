"""The sparse kernels against dense references."""

import torch

from featurescope.sae.kernels import Pattern, _gathered_dot


def test_gathered_dot_matches_the_dense_products_for_fixed_and_varying_entries():
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(50, 24, generator=g), torch.randn(40, 24, generator=g)
    fixed = Pattern.from_topk(torch.randint(0, 40, (50, 3), generator=g))
    flat = torch.randperm(50 * 40, generator=g)[:170]
    varying = Pattern.from_flat(flat, 40, 50)
    assert varying.k == 0 and int((varying.offsets[1:] - varying.offsets[:-1]).max()) > 1
    for p in (fixed, varying):
        ref = (x[p.rows] * W[p.cols]).sum(-1)
        assert torch.allclose(_gathered_dot(x, W, p), ref, atol=1e-5)  # the CPU's sampled product
        assert torch.allclose(_gathered_dot(x.double(), W.double(), p), ref.double(), atol=1e-5)
        assert torch.allclose(_gathered_dot(x.bfloat16(), W.bfloat16(), p).float(), ref, atol=0.3)  # the gathers
