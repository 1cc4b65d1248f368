"""The CPU dispatchers of the fused ops give bitwise their torch references on fresh
random inputs (the HF-parity tests compare fp32 tokens exactly, so nothing may round
differently)."""
from __future__ import annotations

import pytest
import torch

from lmnb.runtime.kernels import add_rms_norm, add_rms_norm_ref, rms_norm, rms_norm_ref


@pytest.mark.parametrize("dim", [64, 576, 960, 4096])
@pytest.mark.parametrize("rows", [1, 3, 16, 33])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 40.0])
def test_rms_norm_is_the_reference_bitwise(dim, rows, scale):
    g = torch.Generator().manual_seed(dim * 131 + rows)
    x = torch.randn(rows, dim, generator=g) * scale
    r = torch.randn(rows, dim, generator=g)
    w = torch.randn(dim, generator=g)
    assert torch.equal(rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5))
    y, s = add_rms_norm(x, r, w, 1e-6)
    y_ref, s_ref = add_rms_norm_ref(x, r, w, 1e-6)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)


def test_rms_norm_of_head_shaped_and_low_precision_inputs():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(5, 9, 64, generator=g)           # per-head q/k norms
    w = torch.randn(64, generator=g)
    assert torch.equal(rms_norm(q, w, 1e-6), rms_norm_ref(q, w, 1e-6))
    for dt in (torch.bfloat16, torch.float16):        # these keep the reference's rounding
        x, wd = q.to(dt), w.to(dt)
        assert torch.equal(rms_norm(x, wd, 1e-6), rms_norm_ref(x, wd, 1e-6))
