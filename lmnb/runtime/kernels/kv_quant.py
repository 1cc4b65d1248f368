"""Triton pieces of the FP8 KV cache (scheme and torch reference: `lmnb.runtime.kv_dtype`).

`quantize_store` is inlined by every kernel that writes K/V rows into an FP8 pool (the
KV store of `attention.triton_kernels`, the fused rotary + store of `kernels.rope`): one
token's heads are in registers, so the scale costs a row max and one division."""
from __future__ import annotations

import triton
import triton.language as tl

INV_FP8_MAX: tl.constexpr = tl.constexpr(1.0 / 448.0)   # kv_dtype.INV_FP8_MAX


@triton.jit
def row_scales(amax):
    """amax * fp32(1/448) per row; 1.0 for an all-zero row (its codes are 0 either way)."""
    return tl.where(amax > 0, amax * INV_FP8_MAX, 1.0)


@triton.jit
def quantize_rows(x, scale):
    """x [H, D] fp32, scale [H] -> codes: x / scale with IEEE division (as the torch
    reference), clamped to the finite e4m3 range, then rounded by the store's cast."""
    code = tl.div_rn(x, tl.broadcast_to(scale[:, None], x.shape))
    return tl.minimum(tl.maximum(code, -448.0), 448.0)


@triton.jit
def quantize_store(x, dst, scale_dst, mask, mask_h):
    """Stores x [BLOCK_H, BLOCK_D] (one token's heads; masked lanes hold 0) as e4m3 codes
    at `dst` and each head's scale at `scale_dst` [BLOCK_H]."""
    xf = x.to(tl.float32)
    scale = row_scales(tl.max(tl.abs(xf), 1))
    tl.store(dst, quantize_rows(xf, scale).to(dst.dtype.element_ty), mask=mask)
    tl.store(scale_dst, scale, mask=mask_h)
