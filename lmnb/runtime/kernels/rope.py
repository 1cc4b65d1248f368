"""Rotary embedding (HF rotate_half form) in Triton: one program per token rotates all
query and key heads, cos/sin read once from the table row of the token's position.
Reference: `reference.rotary_ref`."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from lmnb.runtime.kernels.kv_quant import quantize_rows, quantize_store, row_scales
from lmnb.runtime.kernels.pdl import launch_kwargs, pdl_enabled, pdl_start


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
def _rotate_quant(X, XO, XS, t, stride_t, stride_h, stride_oh, n_heads, half, c, s,
                  BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """_rotate into an FP8 pool row: both halves rounded to X's dtype (what the unfused
    path stores), then quantized with one scale per head (kernels.kv_quant) written to XS."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    mask_h = offs_h < n_heads
    mask = mask_h[:, None] & (offs_d[None, :] < half)
    src = X + t * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    dst = XO + offs_h[:, None] * stride_oh + offs_d[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    a = (x1 * c - x2 * s).to(X.dtype.element_ty).to(tl.float32)
    b = (x2 * c + x1 * s).to(X.dtype.element_ty).to(tl.float32)
    scale = row_scales(tl.maximum(tl.max(tl.abs(a), 1), tl.max(tl.abs(b), 1)))
    tl.store(dst, quantize_rows(a, scale).to(XO.dtype.element_ty), mask=mask)
    tl.store(dst + half, quantize_rows(b, scale).to(XO.dtype.element_ty), mask=mask)
    tl.store(XS + offs_h, scale, mask=mask_h)


@triton.jit
def _rotary_kernel(Q, K, QO, KO, Pos, Cos, Sin, V, VO, Loc, KS, VS, stride_qt, stride_qh,
                   stride_kt, stride_kh, stride_qot, stride_qoh, stride_kot, stride_koh,
                   stride_cos, stride_sin, stride_vt, stride_vh, stride_vot, stride_voh,
                   stride_st, n_q, n_k, half, head_dim, BLOCK_HQ: tl.constexpr,
                   BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr,
                   STORE: tl.constexpr, QUANT: tl.constexpr, PDL: tl.constexpr):
    """STORE: KO / VO are the layer's KV pool buffers and token t's rotated k and its v go
    to row Loc[t] (cast to the pool dtype): rotary and the KV store in one kernel. QUANT
    (an FP8 pool): the rows are quantized and their scales go to KS / VS[Loc[t]]."""
    pdl_start(PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(Pos + t).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_HALF)
    c = tl.load(Cos + pos * stride_cos + offs_d, mask=offs_d < half, other=0.0).to(tl.float32)
    s = tl.load(Sin + pos * stride_sin + offs_d, mask=offs_d < half, other=0.0).to(tl.float32)
    c, s = c[None, :], s[None, :]
    _rotate(Q, QO, t, stride_qt, stride_qh, stride_qot, stride_qoh, n_q, half, c, s,
            BLOCK_HQ, BLOCK_HALF)
    if STORE:
        row = tl.load(Loc + t).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_HK)
        offs_v = tl.arange(0, BLOCK_D)
        mask = (offs_h[:, None] < n_k) & (offs_v[None, :] < head_dim)
        v = tl.load(V + t * stride_vt + offs_h[:, None] * stride_vh + offs_v[None, :], mask=mask,
                    other=0.0)
        v_dst = VO + row * stride_vot + offs_h[:, None] * stride_voh + offs_v[None, :]
        if QUANT:
            _rotate_quant(K, KO + row * stride_kot, KS + row * stride_st, t, stride_kt, stride_kh,
                          stride_koh, n_k, half, c, s, BLOCK_HK, BLOCK_HALF)
            quantize_store(v, v_dst, VS + row * stride_st + offs_h, mask, offs_h < n_k)
        else:
            _rotate(K, KO + row * stride_kot, t, stride_kt, stride_kh, 0, stride_koh, n_k, half,
                    c, s, BLOCK_HK, BLOCK_HALF)
            tl.store(v_dst, v.to(VO.dtype.element_ty), mask=mask)
    else:
        _rotate(K, KO, t, stride_kt, stride_kh, stride_kot, stride_koh, n_k, half, c, s,
                BLOCK_HK, BLOCK_HALF)


def _launch(q, k, positions, cos, sin, qo, ko, v=None, vo=None, loc=None, ks=None,
            vs=None) -> None:
    t, hq, d = q.shape
    hk = k.shape[1]
    if not t:
        return
    store = v is not None
    quant = ks is not None
    vv = v if store else q
    half = d // 2
    _rotary_kernel[(t,)](
        q, k, qo, ko, positions, cos, sin, vv, vo if store else qo, loc if store else positions,
        ks if quant else qo, vs if quant else qo,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), qo.stride(0), qo.stride(1),
        ko.stride(0), ko.stride(1), cos.stride(0), sin.stride(0), vv.stride(0), vv.stride(1),
        vo.stride(0) if store else 0, vo.stride(1) if store else 0,
        ks.stride(0) if quant else 0, hq, hk, half, d,
        BLOCK_HQ=triton.next_power_of_2(hq), BLOCK_HK=triton.next_power_of_2(hk),
        BLOCK_HALF=triton.next_power_of_2(half), BLOCK_D=triton.next_power_of_2(d), STORE=store,
        QUANT=quant, PDL=pdl_enabled(q.device), num_warps=4, **launch_kwargs(q.device))


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def rotary_store_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                        cos: torch.Tensor, sin: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                        loc: torch.Tensor, k_scale: torch.Tensor | None = None,
                        v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Rotates q and k (as rotary_triton) and writes k_buf[loc] = rotated k, v_buf[loc] = v
    (as attention.triton_kernels.store_kv) in one launch; returns the rotated q. With
    scales (an FP8 pool) the rows are quantized as `kv_dtype.quantize_ref` does."""
    q, k, v = _rows_contiguous(q), _rows_contiguous(k), _rows_contiguous(v)
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _launch(q, k, positions, cos, sin, qo, k_buf, v, v_buf, loc, k_scale, v_scale)
    return qo


def rotary_triton(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, H, D], k [T, KVH, D] (views of a fused projection are fine: only the last
    dim must be contiguous); cos/sin [max_pos, D] (HF layout, first half read) or
    [max_pos, D // 2]. Returns new tensors."""
    q, k = _rows_contiguous(q), _rows_contiguous(k)
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    _launch(q, k, positions, cos, sin, qo, ko)
    return qo, ko
