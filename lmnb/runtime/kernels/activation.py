"""SiLU-and-mul in Triton: x [..., 2 * I] (gate then up) -> silu(gate) * up, computed in
fp32 and rounded once. Reference: `reference.silu_and_mul_ref`."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmnb.runtime.kernels.pdl import launch_kwargs, pdl_enabled, pdl_start


@triton.jit
def _silu_and_mul_kernel(X, Y, stride_x, stride_y, inter, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    gate = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(X + row * stride_x + inter + offs, mask=mask, other=0.0).to(tl.float32)
    y = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(Y + row * stride_y + offs, y.to(Y.dtype.element_ty), mask=mask)


def silu_and_mul_triton(x: torch.Tensor) -> torch.Tensor:
    inter = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty((x2.shape[0], inter), dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(max(inter, 16)))
    if x2.shape[0]:
        _silu_and_mul_kernel[(x2.shape[0], triton.cdiv(inter, block))](
            x2, y, x2.stride(0), y.stride(0), inter, BLOCK=block, PDL=pdl_enabled(x.device),
            num_warps=4, **launch_kwargs(x.device))
    return y.view(*x.shape[:-1], inter)
