"""Rotary embedding (HF rotate_half form) in Triton: one program per token rotates all
query and key heads, cos/sin read once from the table row of the token's position.
Reference: `reference.rotary_ref`."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate(X, XO, t, stride_t, stride_h, stride_ot, stride_oh, n_heads, half, c, s,
            BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask = (offs_h[:, None] < n_heads) & (offs_d[None, :] < half)
    src = X + t * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    dst = XO + t * stride_ot + offs_h[:, None] * stride_oh + offs_d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    tl.store(dst, (x1 * c - x2 * s).to(XO.dtype.element_ty), mask=mask)
    tl.store(dst + half, (x2 * c + x1 * s).to(XO.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(Q, K, QO, KO, Pos, Cos, Sin, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_qot, stride_qoh, stride_kot, stride_koh, stride_cos, stride_sin,
                   n_q, n_k, half, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
                   BLOCK_HALF: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Pos + t).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    c = tl.load(Cos + pos * stride_cos + offs_d, mask=offs_d < half, other=0.0).to(tl.float32)
    s = tl.load(Sin + pos * stride_sin + offs_d, mask=offs_d < half, other=0.0).to(tl.float32)
    c, s = c[None, :], s[None, :]
    _rotate(Q, QO, t, stride_qt, stride_qh, stride_qot, stride_qoh, n_q, half, c, s,
            BLOCK_HQ, BLOCK_HALF)
    _rotate(K, KO, t, stride_kt, stride_kh, stride_kot, stride_koh, n_k, half, c, s,
            BLOCK_HK, BLOCK_HALF)


def rotary_triton(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, H, D], k [T, KVH, D] (views of a fused projection are fine: only the last
    dim must be contiguous); cos/sin [max_pos, D] (HF layout, first half read) or
    [max_pos, D // 2]. Returns new tensors."""
    t, hq, d = q.shape
    hk = k.shape[1]
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    qo, ko = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(
        k.shape, dtype=k.dtype, device=k.device)
    if t:
        half = d // 2
        _rotary_kernel[(t,)](
            q, k, qo, ko, positions, cos, sin, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), qo.stride(0), qo.stride(1), ko.stride(0), ko.stride(1), cos.stride(0),
            sin.stride(0), hq, hk, half, BLOCK_HQ=triton.next_power_of_2(hq),
            BLOCK_HK=triton.next_power_of_2(hk), BLOCK_HALF=triton.next_power_of_2(half),
            num_warps=4)
    return qo, ko
