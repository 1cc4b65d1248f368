"""RMSNorm in Triton, optionally fused with the residual add (one row per program, fp32
statistics). Reference: `reference.rms_norm_ref` / `add_rms_norm_ref`."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmnb.runtime.kernels.pdl import launch_kwargs, pdl_enabled, pdl_start


@triton.jit
def _rms_norm_kernel(X, R, W, Y, S, stride_x, stride_r, stride_y, stride_s, n, eps,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x = x + tl.load(R + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)
        # the sum is rounded to the model dtype before the norm, as the unfused model does
        x_round = x.to(S.dtype.element_ty)
        tl.store(S + row * stride_s + offs, x_round, mask=mask)
        x = x_round.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 0) / n + eps)
    y = (x * rstd).to(Y.dtype.element_ty).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + offs, (y * w).to(Y.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch(x, residual, weight, eps):
    n = x.shape[-1]
    x2 = _rows(x)
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    r2 = _rows(residual) if residual is not None else x2
    s = torch.empty_like(y) if residual is not None else y
    block = triton.next_power_of_2(n)
    warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    if x2.shape[0]:
        _rms_norm_kernel[(x2.shape[0],)](
            x2, r2, weight, y, s, x2.stride(0), r2.stride(0), y.stride(0), s.stride(0), n, eps,
            HAS_RESIDUAL=residual is not None, BLOCK=block, PDL=pdl_enabled(x.device),
            num_warps=warps, **launch_kwargs(x.device))
    return y.view(x.shape), s.view(x.shape)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _launch(x, None, weight, eps)[0]


def add_rms_norm_triton(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass over the row."""
    return _launch(x, residual, weight, eps)
