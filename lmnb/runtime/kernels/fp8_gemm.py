"""FP8 (e4m3) weight GEMMs in Triton, and the dispatch between them and `torch._scaled_mm`.
References: `lmnb.runtime.quant.fp8_reference` (fp8_linear_ref, quantize_rows_ref).

    fp8_matmul(x [M, K], q [N, K] fp8, s, block, act) -> y [M, N] in x's dtype
      M <= 4     fp8_gemv: weight-only GEMV. Program (n, k) owns BLOCK_N output rows over
                 a K range (whole K by default: on the 8B shapes the grids already hold
                 >= 4 programs per SM, and split-K never won); the fp8 tile is loaded as
                 16-byte vectors, upcast in registers, accumulated elementwise in fp32,
                 reduced once; the per-channel scale is applied once per output. act=1
                 (the MLP's down projection) reads silu(gate) * up from [M, 2K] itself.
      M <= 16    fp8_w8a16: tl.dot over bf16 activations and upcast fp8 tiles (BLOCK_M 16,
                 split-K for the narrow N of o / down); also every M for block scales.
      16 < M <= 256 (decode batches, per-channel) fp8_w8a8: per-token fp8 activations
                 (quantize_rows) and tl.dot on the FP8 tensor cores, or _scaled_mm.
      M > 256    (prefill) per-token activations on torch._scaled_mm (rowwise scales).
Split-K (GEMV and tl.dot kernels) writes fp32 partials that `_splitk_reduce_kernel` sums in
a fixed order (deterministic: no atomics) and scales. `dense_small_m`: the same GEMV on a
bf16/fp16 weight (no scales) for the dense model's batch-1 projections.
Block scales (bn x bk, 128 x 128 in checkpoints) are read per tile (GEMV: one scale per
column of the tile) inside the K loop.

Every launch has a fixed grid and output shape for a given M, no host sync: the calls are
CUDA-graph safe. Kernels launch with programmatic dependent launch on sm90+
(`kernels.pdl`): a GEMV loads its first weight tile before waiting for the kernel before
it. For M <= 256 the kernel and its tile come from a timed choice on first use per shape
and bucket of M (1, 2, 4, 8, 16; powers of two above), cached for the process and on disk
(`stored_choice`: one file per GPU model and kernel source): each
candidate runs over distinct copies of the weight inside one CUDA graph (`time_cold`:
weights from HBM and a decode step's launch gaps, as in the model). Eager calls only,
never while a graph is being captured; `LMNB_FP8_TUNE=0`: the first candidate.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import triton
import triton.language as tl

from lmnb.runtime.kernels.activation import silu_and_mul_triton as silu_and_mul
from lmnb.runtime.kernels.pdl import launch_kwargs, pdl_enabled, pdl_start, pdl_trigger, pdl_wait

GEMV_MAX_M = 4
SKINNY_MAX_M = 16
WIDE_MAX_M = 256     # above: prefill / extend, straight to _scaled_mm
FP8_MAX = 448.0


# ---------------------------------------------------------------------------- kernels
@triton.jit
def _gemv_x(X, row, M, K, stride_xm, offs_k, k_ok, EVEN_K: tl.constexpr, ACT: tl.constexpr):
    """Row `row` of the activations at offs_k, fp32. ACT == 1: X is [M, 2K] (gate, up)
    and the row is silu(gate) * up rounded to X's dtype, what `silu_and_mul` stores."""
    ok = k_ok & (row < M)
    if EVEN_K:
        ok = (offs_k * 0 + row) < M
    ptr = X + row * stride_xm + offs_k
    if ACT == 1:
        g = tl.load(ptr, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(ptr + K, mask=ok, other=0.0).to(tl.float32)
        return (g / (1.0 + tl.exp(-g)) * u).to(X.dtype.element_ty).to(tl.float32)
    return tl.load(ptr, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _gemv_step(acc0, acc1, acc2, acc3, w, X, S, M, K, stride_xm, stride_sn, pid_n, offs_k, k_ok,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCALE: tl.constexpr,
               SB_N: tl.constexpr, SB_K: tl.constexpr, EVEN_K: tl.constexpr, ACT: tl.constexpr):
    """acc_m += w * x_m for one weight tile w [BLOCK_N, BLOCK_K] (elementwise, fp32)."""
    wf = w.to(tl.float32)
    if SCALE == 2:
        s = tl.load(S + (pid_n * BLOCK_N // SB_N) * stride_sn + offs_k // SB_K, mask=k_ok, other=0.0)
        wf = wf * s[None, :]
    acc0 += wf * _gemv_x(X, 0, M, K, stride_xm, offs_k, k_ok, EVEN_K, ACT)[None, :]
    if BLOCK_M > 1:
        acc1 += wf * _gemv_x(X, 1, M, K, stride_xm, offs_k, k_ok, EVEN_K, ACT)[None, :]
    if BLOCK_M > 2:
        acc2 += wf * _gemv_x(X, 2, M, K, stride_xm, offs_k, k_ok, EVEN_K, ACT)[None, :]
        acc3 += wf * _gemv_x(X, 3, M, K, stride_xm, offs_k, k_ok, EVEN_K, ACT)[None, :]
    return acc0, acc1, acc2, acc3


@triton.jit
def _gemv_norm_step(acc0, ss, w, X, R, G, S, stride_sn, pid_n, offs_k, k_ok,
                    BLOCK_N: tl.constexpr, SCALE: tl.constexpr, SB_N: tl.constexpr,
                    SB_K: tl.constexpr, NORM: tl.constexpr):
    """The one-row GEMV step on the RMS-normalised input: acc0 += w * (s * g) and
    ss += s * s, where s = X (NORM == 1) or X + R rounded to X's dtype (NORM == 2: the
    residual add; the kernel's first program stores it after its loop: a store inside the
    loop kept the next tile's loads behind it, 4-10 us per GEMV on the H200). The row's
    1 / rms is applied to the sums at the end (`_gemv_out`'s scale): the GEMV reads
    s * g rounded once (the norm kernel rounds s / rms, then its product with g)."""
    wf = w.to(tl.float32)
    if SCALE == 2:
        sc = tl.load(S + (pid_n * BLOCK_N // SB_N) * stride_sn + offs_k // SB_K, mask=k_ok, other=0.0)
        wf = wf * sc[None, :]
    x = tl.load(X + offs_k, mask=k_ok, other=0.0)
    g = tl.load(G + offs_k, mask=k_ok, other=0.0).to(tl.float32)
    if NORM == 2:
        x = (x.to(tl.float32) + tl.load(R + offs_k, mask=k_ok, other=0.0).to(tl.float32)).to(X.dtype.element_ty)
    xf = x.to(tl.float32)
    ss += xf * xf
    # s * g rounded to X's dtype, as the plain GEMV reads its input: the layout change
    # to the tile's columns then moves 16-bit values (as it does there), not fp32
    xg = (xf * g).to(X.dtype.element_ty).to(tl.float32)
    acc0 += wf * xg[None, :]
    return acc0, ss


@triton.jit
def _gemv_out(Y, P, acc, row, M, N, rn, n_ok, pid_k, stride_ym, scale, SPLIT: tl.constexpr):
    """One output row of a GEMV program: the scaled result, or (split-K) the fp32 partial
    sum of this program's K range into P[pid_k, row, :]."""
    part = tl.sum(acc, axis=1)
    ok = n_ok & (row < M)
    if SPLIT:
        tl.store(P + (pid_k * M + row).to(tl.int64) * N + rn, part, mask=ok)
    else:
        tl.store(Y + row * stride_ym + rn, (part * scale).to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _fp8_gemv_kernel(X, W, S, Y, P, R, G, SO, M, N, K, K_SPLIT, stride_xm, stride_wn, stride_ym,
                     stride_sn, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, SCALE: tl.constexpr, SB_N: tl.constexpr,
                     SB_K: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr,
                     ACT: tl.constexpr, NORM: tl.constexpr, PIPE: tl.constexpr, PDL: tl.constexpr):
    """Y[m, n] = sum_k X[m, k] * W[n, k] * scale for M <= BLOCK_M <= 4 rows.

    Program (pid_n, pid_k) owns BLOCK_N output rows over K[pid_k * K_SPLIT, +K_SPLIT)
    (K_SPLIT a multiple of BLOCK_K). The weight tile [BLOCK_N, BLOCK_K] is loaded in its
    storage dtype (fp8: BLOCK_K contiguous bytes per row, 16-byte vector loads), upcast in
    registers and accumulated elementwise in fp32; one reduction over K at the end.
    SCALE: 0 none (bf16 weights), 1 per channel (S [N], applied once per output), 2 block
    scales (S [cdiv(N, SB_N), cdiv(K, SB_K)], one per tile column, in the loop).
    SPLIT: write fp32 partials P [splits, M, N] for `_splitk_reduce_kernel` (which
    applies the per-channel scale); else write Y directly. ACT == 1: X is [M, 2K] and the
    GEMV reads silu(gate) * up (the MLP's down projection without its own activation
    kernel). NORM (one row, whole-K programs): the GEMV of rms_norm(X) * G (NORM == 1) or
    of rms_norm(X + R) * G with X + R stored to SO (NORM == 2), see `_gemv_norm_step`:
    the decoder's residual add and norm without their own kernel. PDL: the first weight tile is loaded before waiting for the previous kernel
    (see `kernels.pdl`). PIPE: the next tile's loads are issued before the current tile's
    math (two tiles in flight per program; also two before the wait)."""
    pdl_trigger(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_ok = rn < N
    k_lo = pid_k * K_SPLIT
    k_hi = tl.minimum(k_lo + K_SPLIT, K)
    w_ptr = W + rn.to(tl.int64)[:, None] * stride_wn + (k_lo + rk)[None, :]
    acc0 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    # the first tile: weights only, so it may be read before the previous kernel is done
    offs_k = k_lo + rk
    k_ok = offs_k < k_hi
    if EVEN_K:
        w = tl.load(w_ptr, mask=n_ok[:, None], other=0.0)
    else:
        w = tl.load(w_ptr, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
    if PIPE:
        w_nxt = tl.load(w_ptr + BLOCK_K, mask=n_ok[:, None] & (offs_k + BLOCK_K < k_hi)[None, :],
                        other=0.0)
    ss = tl.zeros([BLOCK_K], dtype=tl.float32)
    pdl_wait(PDL)
    if NORM:
        acc0, ss = _gemv_norm_step(acc0, ss, w, X, R, G, S, stride_sn, pid_n, offs_k, k_ok,
                                   BLOCK_N, SCALE, SB_N, SB_K, NORM)
    else:
        acc0, acc1, acc2, acc3 = _gemv_step(acc0, acc1, acc2, acc3, w, X, S, M, K, stride_xm,
                                            stride_sn, pid_n, offs_k, k_ok, BLOCK_M, BLOCK_N,
                                            SCALE, SB_N, SB_K, EVEN_K, ACT)
    for k0 in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
        w_ptr += BLOCK_K
        offs_k = k0 + rk
        k_ok = offs_k < k_hi
        if PIPE:
            w = w_nxt
            w_nxt = tl.load(w_ptr + BLOCK_K, mask=n_ok[:, None] & (offs_k + BLOCK_K < k_hi)[None, :],
                            other=0.0)
        elif EVEN_K:
            w = tl.load(w_ptr, mask=n_ok[:, None], other=0.0)
        else:
            w = tl.load(w_ptr, mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:
            acc0, ss = _gemv_norm_step(acc0, ss, w, X, R, G, S, stride_sn, pid_n, offs_k,
                                       k_ok, BLOCK_N, SCALE, SB_N, SB_K, NORM)
        else:
            acc0, acc1, acc2, acc3 = _gemv_step(acc0, acc1, acc2, acc3, w, X, S, M, K, stride_xm,
                                                stride_sn, pid_n, offs_k, k_ok, BLOCK_M, BLOCK_N,
                                                SCALE, SB_N, SB_K, EVEN_K, ACT)
    if SCALE == 1 and not SPLIT:
        scale = tl.load(S + rn, mask=n_ok, other=0.0)
    else:
        scale = tl.full([BLOCK_N], 1.0, dtype=tl.float32)
    if NORM:
        scale = scale * tl.rsqrt(tl.sum(ss, 0) / K + eps)
    if NORM == 2:  # noqa: SIM102 - a constexpr test, then a program's
        if pid_n == 0:
            for k1 in range(0, K, BLOCK_K):
                o1 = k1 + rk
                ok1 = o1 < K
                t = tl.load(X + o1, mask=ok1, other=0.0).to(tl.float32) + tl.load(R + o1, mask=ok1, other=0.0).to(tl.float32)
                tl.store(SO + o1, t.to(X.dtype.element_ty), mask=ok1)
    _gemv_out(Y, P, acc0, 0, M, N, rn, n_ok, pid_k, stride_ym, scale, SPLIT)
    if BLOCK_M > 1:
        _gemv_out(Y, P, acc1, 1, M, N, rn, n_ok, pid_k, stride_ym, scale, SPLIT)
    if BLOCK_M > 2:
        _gemv_out(Y, P, acc2, 2, M, N, rn, n_ok, pid_k, stride_ym, scale, SPLIT)
        _gemv_out(Y, P, acc3, 3, M, N, rn, n_ok, pid_k, stride_ym, scale, SPLIT)


@triton.jit
def _splitk_reduce_kernel(P, S, Y, MN, N, SPLITS, stride_ym, SCALE: tl.constexpr,
                          BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Y[m, n] = (sum over s = 0, 1, ... of P[s, m, n]) * S[n] (SCALE == 1): the split-K
    partials summed in a fixed order, so the result does not depend on which program
    finished first (no atomics)."""
    pdl_start(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < MN
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for sp in range(SPLITS):
        acc += tl.load(P + sp * MN + offs, mask=ok, other=0.0)
    n = offs % N
    if SCALE == 1:
        acc = acc * tl.load(S + n, mask=ok, other=0.0)
    tl.store(Y + (offs // N) * stride_ym + n, acc.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _fp8_w8a16_kernel(X, W, S, XS, Y, P, M, N, K, K_SPLIT, stride_xm, stride_wn, stride_ym,
                      stride_sn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, SB_N: tl.constexpr, SB_K: tl.constexpr,
                      EVEN_K: tl.constexpr, GROUP_M: tl.constexpr, SPLIT: tl.constexpr,
                      A8: tl.constexpr, PDL: tl.constexpr):
    """Y = X @ dequant(W).T with tl.dot on X's dtype; fp8 tiles upcast after the load.
    Block scales: BLOCK_N divides SB_N and BLOCK_K divides SB_K, so a tile has one scale.
    Program axis 1 is the K split (K_SPLIT a multiple of BLOCK_K); SPLIT: fp32 partials
    to P [splits, M, N], summed and scaled by `_splitk_reduce_kernel`. A8: X is fp8
    (per-token, row scales XS [M, 1], per-channel S only) and tl.dot runs on the FP8
    tensor cores; the row scale is applied with the channel scale (or to the partials)."""
    pdl_start(PDL)
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    k_lo = pid_k * K_SPLIT
    k_hi = tl.minimum(k_lo + K_SPLIT, K)
    x_ptr = X + rm.to(tl.int64)[:, None] * stride_xm + (k_lo + rk)[None, :]
    w_ptr = W + rn.to(tl.int64)[None, :] * stride_wn + (k_lo + rk)[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptr, mask=m_ok[:, None], other=0.0)
            b = tl.load(w_ptr, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = (k0 + rk) < k_hi
            a = tl.load(x_ptr, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if not A8:
            b = b.to(a.dtype)
        if SB_N > 0:
            s = tl.load(S + (pid_n * BLOCK_N // SB_N) * stride_sn + k0 // SB_K)
            acc += tl.dot(a, b) * s
        else:
            acc = tl.dot(a, b, acc)
        x_ptr += BLOCK_K
        w_ptr += BLOCK_K
    ok = m_ok[:, None] & n_ok[None, :]
    if A8:
        acc = acc * tl.load(XS + rm, mask=m_ok, other=0.0)[:, None]
    if SPLIT:
        tl.store(P + (pid_k * M + rm.to(tl.int64))[:, None] * N + rn[None, :], acc, mask=ok)
    else:
        if SB_N == 0:
            acc = acc * tl.load(S + rn, mask=n_ok, other=0.0)[None, :]
        y_ptr = Y + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
        tl.store(y_ptr, acc.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _quantize_rows_kernel(X, Q, S, K, stride_x, stride_q, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Per-row absmax scale (amax / 448) and the row rounded to e4m3."""
    pdl_start(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros([BLOCK], dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        x = tl.load(X + row * stride_x + k0 + offs, mask=(k0 + offs) < K, other=0.0)
        amax = tl.maximum(amax, tl.abs(x.to(tl.float32)))
    s = tl.maximum(tl.max(amax, axis=0), 1e-12) / 448.0
    tl.store(S + row, s)
    for k0 in range(0, K, BLOCK):
        mask = (k0 + offs) < K
        x = tl.load(X + row * stride_x + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x / s, -448.0), 448.0)
        tl.store(Q + row * stride_q + k0 + offs, q.to(Q.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------- launchers
REDUCE_BLOCK = 256


def _scale_args(s: torch.Tensor | None, block):
    if s is None or block is None:
        return 0, 0, 0
    return block[0], block[1], s.stride(0)


def _scale_mode(s: torch.Tensor | None, block) -> int:
    return 0 if s is None else (1 if block is None else 2)


def k_splits(k: int, block_k: int, split_k: int) -> tuple[int, int]:
    """(K per split: a multiple of block_k; the number of splits that range gives)."""
    per = triton.cdiv(triton.cdiv(k, max(1, split_k)), block_k) * block_k
    return per, triton.cdiv(k, per)


def _partials(m: int, n: int, splits: int, y: torch.Tensor) -> torch.Tensor:
    if splits == 1:
        return y   # unused by the kernel
    return torch.empty((splits, m, n), dtype=torch.float32, device=y.device)


def _reduce_splits(p: torch.Tensor, s, y: torch.Tensor, mode: int) -> None:
    splits, m, n = p.shape
    _splitk_reduce_kernel[(triton.cdiv(m * n, REDUCE_BLOCK),)](
        p, s if s is not None else y, y, m * n, n, splits, y.stride(0),
        SCALE=1 if mode == 1 else 0, BLOCK=REDUCE_BLOCK, PDL=pdl_enabled(y.device),
        num_warps=4, **launch_kwargs(y.device))


@dataclass(frozen=True, slots=True)
class GemvNorm:
    """The RMSNorm a one-row GEMV applies to its input first (`_gemv_norm_step`): its
    weight and eps, and the residual added before it (None: the norm of x alone)."""

    weight: torch.Tensor
    eps: float
    residual: torch.Tensor | None = None


def _launch_gemv(x, q, s, block, y, cfg, act: int = 0, norm: GemvNorm | None = None,
                 sum_out: torch.Tensor | None = None) -> None:
    """act == 1: x is [M, 2K] (gate, up) and the GEMV reads silu(gate) * up. norm: x is
    one row and the GEMV's input is its RMS norm (see GemvNorm; whole-K programs only),
    with x + norm.residual stored to sum_out."""
    m, k = x.shape
    if act:
        k //= 2
    n = q.shape[0]
    bn, bk, warps, split_k, *pipe = cfg
    per, splits = k_splits(k, bk, split_k)
    if norm is not None and (m != 1 or splits != 1 or act):
        raise ValueError("a GEMV applies a norm to one row over whole-K programs, without act")
    mode = _scale_mode(s, block)
    sb_n, sb_k, stride_sn = _scale_args(s, block)
    p = _partials(m, n, splits, y)
    pdl = pdl_enabled(x.device)
    norm_mode = 0 if norm is None else (1 if norm.residual is None else 2)
    if norm_mode >= 2 and (sum_out is None or sum_out.data_ptr() in (x.data_ptr(), norm.residual.data_ptr())):
        raise ValueError("the residual sum needs a buffer of its own (programs read x and the residual)")
    _fp8_gemv_kernel[(triton.cdiv(n, bn), splits)](
        x, q, s if s is not None else y, y, p, x if norm_mode < 2 else norm.residual,
        x if norm is None else norm.weight, x if norm_mode < 2 else sum_out, m, n, k, per,
        x.stride(0), q.stride(0), y.stride(0), stride_sn, 0.0 if norm is None else norm.eps,
        BLOCK_M=_gemv_rows(m), BLOCK_N=bn, BLOCK_K=bk, SCALE=mode, SB_N=sb_n, SB_K=sb_k,
        EVEN_K=k % bk == 0, SPLIT=splits > 1, ACT=act, NORM=norm_mode,
        PIPE=bool(pipe and pipe[0]), PDL=pdl, num_warps=warps,
        **launch_kwargs(x.device))
    if splits > 1:
        _reduce_splits(p, s, y, mode)


def _launch_w8a16(x, q, s, block, y, cfg, xs: torch.Tensor | None = None) -> None:
    """xs: x is fp8 (per-token rows, scales xs [M, 1]) and the dot runs on fp8 operands."""
    m, k = x.shape
    n = q.shape[0]
    bm, bn, bk, warps, stages, split_k = cfg
    per, splits = k_splits(k, bk, split_k)
    sb_n, sb_k, stride_sn = _scale_args(s, block)
    p = _partials(m, n, splits, y)
    _fp8_w8a16_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn), splits)](
        x, q, s, xs if xs is not None else s, y, p, m, n, k, per, x.stride(0), q.stride(0),
        y.stride(0), stride_sn, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SB_N=sb_n, SB_K=sb_k,
        EVEN_K=k % bk == 0, GROUP_M=8, SPLIT=splits > 1, A8=xs is not None,
        PDL=pdl_enabled(x.device), num_warps=warps, num_stages=stages, **launch_kwargs(x.device))
    if splits > 1:
        _reduce_splits(p, s, y, _scale_mode(s, block))


def _gemv_rows(m: int) -> int:
    return 1 if m == 1 else (2 if m == 2 else 4)


def fp8_gemv(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor | None, block=None,
             config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x [M, K] (M <= 4), q [N, K] fp8 (or bf16 with s None), s per channel [N] or block
    -> y [M, N] in x's dtype. config = (BLOCK_N, BLOCK_K, num_warps, split_k); None: the
    default."""
    m, k = x.shape
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"fp8_gemv takes 1..{GEMV_MAX_M} rows, got {m}")
    y = torch.empty((m, q.shape[0]), dtype=x.dtype, device=x.device)
    _launch_gemv(x, q, s, block, y, config or gemv_configs(_gemv_rows(m), q.shape[0], k, block)[0])
    return y


# (BLOCK_N, BLOCK_K, warps) per GEMV row count, the default first (the fastest tiles of
# bench/fp8_sweep.py on an H200, 8B shapes; RESULTS.md). Per-thread fp32 accumulators:
# rows * BLOCK_N * BLOCK_K / threads.
GEMV_TILES = {
    1: ((8, 1024, 4), (4, 512, 2), (16, 256, 4), (4, 2048, 4), (8, 256, 2), (8, 1024, 8), (16, 512, 4)),
    2: ((4, 512, 2), (4, 1024, 4), (8, 256, 4), (8, 512, 4)),
    4: ((8, 256, 4), (4, 512, 4)),
}
# GEMV_TILES[1] tiles the norm-in-GEMV choice also tries (norm_candidates)
NORM_TILES = 3
# split-K until the grid has this many programs per SM (at most MAX_SPLIT_K splits, and
# at least MIN_K_PER_SPLIT of K in each)
PROGRAMS_PER_SM = 4
MAX_SPLIT_K = 8
MIN_K_PER_SPLIT = 1024


def _split_for(n: int, k: int, bn: int, bk: int) -> int:
    """The split-K that brings cdiv(n, bn) programs up to PROGRAMS_PER_SM per SM."""
    programs = triton.cdiv(n, bn)
    want = triton.cdiv(PROGRAMS_PER_SM * _sm_count(), programs)
    most = max(1, min(MAX_SPLIT_K, k // max(bk, MIN_K_PER_SPLIT)))
    split = 1
    while split < want and split * 2 <= most:
        split *= 2
    return split


def gemv_configs(bm: int, n: int, k: int, block) -> list[tuple]:
    """Candidate (BLOCK_N, BLOCK_K, warps, split_k[, pipe]), the default first: every tile,
    then every tile with the next-tile pipelining. No split-K: on the 8B shapes it never
    beat whole-K programs at M <= 4 (the sweep), whose grids already hold >= 4 programs
    per SM; the kernel takes a split for other shapes and callers."""
    out = []
    for pipe in (False, True):
        for bn, bk, warps in GEMV_TILES[bm]:
            bk = min(bk, max(16, triton.next_power_of_2(k)))
            if block is not None and block[0] % bn:
                continue
            cfg = (bn, bk, warps, 1, True) if pipe else (bn, bk, warps, 1)
            if cfg not in out and (not pipe or k > bk):
                out.append(cfg)
    return out


def fp8_w8a16(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, block=None,
              config: tuple[int, int, int, int, int, int] | None = None) -> torch.Tensor:
    """Any M: tl.dot over x's dtype with the fp8 weight upcast per tile.
    config = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, split_k); None: the default."""
    m, k = x.shape
    y = torch.empty((m, q.shape[0]), dtype=x.dtype, device=x.device)
    if m:
        _launch_w8a16(x, q, s, block, y, config or w8a16_configs(m, q.shape[0], k, block)[0])
    return y


# (BLOCK_N, BLOCK_K, warps, stages) for the skinny (M <= 16, BLOCK_M 16) tiles, default first
SKINNY_TILES = ((64, 128, 4, 4), (32, 512, 4, 3), (32, 256, 4, 4), (32, 128, 4, 4))


def w8a16_configs(m: int, n: int, k: int, block) -> list[tuple[int, int, int, int, int, int]]:
    """Candidate (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, split_k), the default first."""
    if m > SKINNY_MAX_M:
        bm = 32 if m <= 32 else (64 if m <= 64 else 128)
        base = [(bm, 128, 64, 4 if bm < 128 else 8, 3, 1)]
    else:
        base = []
        for bn, bk, warps, stages in SKINNY_TILES:
            split = _split_for(n, k, bn, bk)
            base += [(16, bn, bk, warps, stages, split), (16, bn, bk, warps, stages, 1)]
    out = []
    for bm, bn, bk, warps, stages, split in base:
        bk = min(bk, max(16, triton.next_power_of_2(k)))
        if block is not None:
            bk = min(bk, block[1])
            if block[0] % bn or block[1] % bk:
                continue
        cfg = (bm, bn, bk, warps, stages, split)
        if cfg not in out:
            out.append(cfg)
    return out


def fp8_w8a8(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor,
             config: tuple[int, int, int, int, int, int] | None = None) -> torch.Tensor:
    """Per-channel weights, M > 16: activations quantized per token (quantize_rows), then
    tl.dot on fp8 operands (the FP8 tensor cores), both scales applied in the epilogue.
    config as for fp8_w8a16."""
    m, k = x.shape
    y = torch.empty((m, q.shape[0]), dtype=x.dtype, device=x.device)
    if m:
        xq, xs = quantize_rows(x)
        _launch_w8a16(xq, q, s, None, y, config or w8a8_configs(m, q.shape[0], k)[0], xs=xs)
    return y


# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) for fp8 x fp8 tiles (M > 16), default first
W8A8_TILES = ((64, 64, 128, 4, 4), (64, 128, 128, 4, 4), (64, 128, 128, 8, 3), (128, 128, 128, 8, 3),
              (32, 64, 128, 4, 4), (64, 64, 256, 4, 3))


def w8a8_configs(m: int, n: int, k: int) -> list[tuple[int, int, int, int, int, int]]:
    """Candidate (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, split_k), the default first:
    each tile with the split-K its grid wants and without."""
    out = []
    for bm, bn, bk, warps, stages in W8A8_TILES:
        if bm > 32 and m <= 32 and bm != 64:
            continue
        bk = min(bk, max(32, triton.next_power_of_2(k)))
        split = _split_for(triton.cdiv(m, bm) * n, k, bn, bk)
        for cfg in ((bm, bn, bk, warps, stages, split), (bm, bn, bk, warps, stages, 1)):
            if cfg not in out:
                out.append(cfg)
    return out


def small_m_candidates(m: int, n: int, k: int, block, dtype, device) -> list[tuple]:
    """What the timed choice tries for M <= 16: GEMV tiles (M <= 4), skinny tl.dot tiles,
    and per-token activations on _scaled_mm (per-channel bf16 where it runs)."""
    cands = [("gemv", c) for c in gemv_configs(_gemv_rows(m), n, k, block)] if m <= GEMV_MAX_M else []
    cands += [("w8a16", c) for c in w8a16_configs(m, n, k, block)]
    if block is None and dtype == torch.bfloat16 and scaled_mm_usable(device, n, k):
        cands.append(("scaled_mm", None))
    return cands


def wide_m_candidates(m: int, n: int, k: int) -> list[tuple]:
    """16 < M <= WIDE_MAX_M, per-channel bf16: _scaled_mm (the default) and fp8 tl.dot tiles."""
    return [("scaled_mm", None)] + [("w8a8", c) for c in w8a8_configs(m, n, k)]


def launch_candidate(cand: tuple, x, q, s, block, y, act: int = 0) -> torch.Tensor:
    """Run one candidate (of `small_m_candidates` / `wide_m_candidates`) into y; act == 1
    (GEMV only): x is [M, 2K] and the GEMV reads silu(gate) * up."""
    kind = cand[0]
    if act and kind != "gemv":
        x = silu_and_mul(x)
    if kind == "scaled_mm":
        _scaled_mm_into(x, q, s, y)
    elif kind == "gemv":
        _launch_gemv(x, q, s, block, y, cand[1], act)
    elif kind == "w8a8":
        xq, xs = quantize_rows(x)
        _launch_w8a16(xq, q, s, None, y, cand[1], xs=xs)
    else:
        _launch_w8a16(x, q, s, block, y, cand[1])
    return y


def _chosen_for(key, cands, x, q, s, block, act: int) -> tuple:
    chosen = _CHOSEN.get(key)
    if chosen is None:
        xt = silu_and_mul(x) if act else x   # the choice is timed on the GEMM alone
        chosen = _choose(key, cands, lambda cand, qq, y: launch_candidate(cand, xt, qq, s, block, y),
                         q, (x.shape[0], q.shape[0]), x.dtype)
    return chosen


def _run_chosen(key, cands, x, q, s, block, act: int) -> torch.Tensor:
    m, n = x.shape[0], q.shape[0]
    chosen = _chosen_for(key, cands, x, q, s, block, act)
    if chosen[0] == "scaled_mm":
        return scaled_mm_rowwise(silu_and_mul(x) if act else x, q, s)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    return launch_candidate(chosen, x, q, s, block, y, act)


def small_m_bucket(m: int) -> int:
    """The row count a small-M choice is made for and reused at: 1, 2, 4 (GEMV rows), 8, 16.
    (Per exact M, the eager extend batches of a serving run would keep timing new keys.)"""
    return _gemv_rows(m) if m <= GEMV_MAX_M else (8 if m <= 8 else 16)


def _small_key(x: torch.Tensor, q: torch.Tensor, block, act: int) -> tuple:
    m, k = x.shape
    return ("small", small_m_bucket(m), q.shape[0], k // 2 if act else k, block, x.dtype, x.device)


def _small_candidates(key: tuple) -> list[tuple]:
    _, m, n, k, block, dtype, device = key
    return small_m_candidates(m, n, k, block, dtype, device) if key not in _CHOSEN else []


def fp8_small_m(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, block=None, act: int = 0) -> torch.Tensor:
    """M <= 16 (decode): the GEMV (M <= 4), the skinny tl.dot kernel or per-token
    activations on torch._scaled_mm, whichever the timed choice finds faster for this
    shape (default: GEMV up to 4 rows, else the skinny kernel). act == 1: x is [M, 2K]
    (gate, up) and the GEMM's input is silu(gate) * up (fused into the GEMV)."""
    key = _small_key(x, q, block, act)
    return _run_chosen(key, _small_candidates(key), x, q, s, block, act)


def norm_gemv_enabled() -> bool:
    """LMNB_NORM_GEMV=1 runs the decoder's add + norm inside the one-row GEMVs; off by
    default: measured slower than the norm kernels (bench/RESULTS.md)."""
    return os.environ.get("LMNB_NORM_GEMV", "0").strip().lower() in ("1", "true", "yes", "on")


def norm_gemv(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor | None, block,
              norm: GemvNorm) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One row x [1, K]: (w's product with rms_norm(x + norm.residual) * norm.weight,
    x + norm.residual) in one GEMV kernel, for an fp8 w with scales s (or a bf16/fp16 w,
    s None), where the timed choice for this shape is the GEMV; None otherwise (the
    caller runs the norm, then the projection). Without a residual the second element
    is x."""
    if x.shape[0] != 1 or x.stride(-1) != 1:
        return None
    if s is None:
        chosen = _dense_choice(x, w, 0)
    else:
        key = _small_key(x, w, block, 0)
        chosen = _chosen_for(key, _small_candidates(key), x, w, s, block, 0)
    if chosen[0] != "gemv" or chosen[1][3] != 1:
        return None
    key = ("norm", 1, w.shape[0], x.shape[1], block, x.dtype, x.device, norm.residual is not None, w.dtype)
    total = x if norm.residual is None else torch.empty_like(x)
    pick = _CHOSEN.get(key)
    if pick is None:
        pick = _choose(key, norm_candidates(chosen[1], x.shape[1]), _norm_launcher(x, s, block, norm, total),
                       w, (1, w.shape[0]), x.dtype)
    if pick[0] == "separate":
        return None
    y = torch.empty((1, w.shape[0]), dtype=x.dtype, device=x.device)
    _launch_gemv(x, w, s, block, y, pick[1], norm=norm, sum_out=total)
    return y, total


def norm_candidates(gemv_cfg: tuple, k: int) -> list[tuple]:
    """What the timed choice for a norm + one-row GEMV tries: the norm kernel, then the
    chosen GEMV (the default), and the GEMV with the norm inside on that tile and on the
    first NORM_TILES tiles of GEMV_TILES[1] (whole K, no next-tile pipelining)."""
    cap = max(16, triton.next_power_of_2(k))
    tiles = [gemv_cfg[:3]] + [(bn, min(bk, cap), warps) for bn, bk, warps in GEMV_TILES[1][:NORM_TILES]]
    return [("separate", gemv_cfg)] + [("fused", (*t, 1)) for t in dict.fromkeys(tiles)]



def _norm_launcher(x, s, block, norm: GemvNorm, total):
    from lmnb.runtime.kernels.norm import add_rms_norm_triton, rms_norm_triton

    def launch(cand, ww, y) -> None:
        if cand[0] == "fused":
            _launch_gemv(x, ww, s, block, y, cand[1], norm=norm, sum_out=total)
        elif norm.residual is None:
            _launch_gemv(rms_norm_triton(x, norm.weight, norm.eps), ww, s, block, y, cand[1])
        else:
            _launch_gemv(add_rms_norm_triton(x, norm.residual, norm.weight, norm.eps)[0], ww, s,
                         block, y, cand[1])

    return launch


def fp8_wide_m(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """16 < M <= WIDE_MAX_M, per-channel bf16 (decode batches): _scaled_mm or the fp8
    tl.dot kernel, the timed choice per shape and power-of-two bucket of M."""
    m, k = x.shape
    n = q.shape[0]
    key = ("wide", triton.next_power_of_2(m), n, k, None, x.dtype, x.device)
    return _run_chosen(key, wide_m_candidates(m, n, k) if key not in _CHOSEN else [], x, q, s, None, 0)


def dense_candidates(m: int, n: int, k: int) -> list[tuple]:
    """A bf16/fp16 weight at M = 1: cuBLAS (the default) and the GEMV tiles on it."""
    return [("cublas", None)] + [("gemv", c) for c in gemv_configs(1, n, k, None)]


def _dense_choice(x: torch.Tensor, w: torch.Tensor, act: int) -> tuple:
    """The timed choice (cuBLAS or a GEMV tile) for x [1, K or 2K] @ w.T."""
    m, k = x.shape
    if act:
        k //= 2
    n = w.shape[0]
    key = ("dense", m, n, k, None, x.dtype, x.device)
    chosen = _CHOSEN.get(key)
    if chosen is None:
        xt = silu_and_mul(x) if act else x
        y = torch.empty((m, n), dtype=x.dtype, device=x.device)

        def launch(cand, ww, y=y, xt=xt) -> None:
            if cand[0] == "cublas":
                torch.mm(xt, ww.t(), out=y)
            else:
                _launch_gemv(xt, ww, None, None, y, cand[1])

        chosen = _choose(key, dense_candidates(m, n, k), launch, w, (m, n), x.dtype)
    return chosen


def dense_small_m(x: torch.Tensor, w: torch.Tensor, act: int = 0) -> torch.Tensor:
    """x [1, K] @ w.T for a bf16/fp16 weight w [N, K]: the GEMV kernel (no scales) or
    cuBLAS, the timed choice per shape. act == 1: x is [1, 2K] (gate, up), input
    silu(gate) * up (fused into the GEMV)."""
    chosen = _dense_choice(x, w, act)
    if chosen[0] == "cublas":
        return torch.mm(silu_and_mul(x) if act else x, w.t())
    y = torch.empty((x.shape[0], w.shape[0]), dtype=x.dtype, device=x.device)
    _launch_gemv(x, w, None, None, y, chosen[1], act)
    return y


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (q [M, K] float8_e4m3fn, s [M, 1] fp32): per-token absmax scales."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m:
        block = min(2048, max(16, triton.next_power_of_2(k)))
        _quantize_rows_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), BLOCK=block,
                                    PDL=pdl_enabled(x.device), num_warps=4 if block <= 1024 else 8,
                                    **launch_kwargs(x.device))
    return q, s


def scaled_mm_rowwise(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x [M, K] bf16 -> per-token fp8 -> torch._scaled_mm with rowwise scales -> [M, N]."""
    xq, xs = quantize_rows(x)
    return torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=s.view(1, -1), out_dtype=x.dtype)


def _scaled_mm_into(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> None:
    """scaled_mm_rowwise written into y (the timed choice compares kernels, not a copy)."""
    xq, xs = quantize_rows(x)
    try:
        torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=s.view(1, -1), out_dtype=y.dtype, out=y)
    except (RuntimeError, TypeError):   # no out= overload here
        y.copy_(torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=s.view(1, -1), out_dtype=y.dtype))


def fp8_matmul(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, block=None, act: int = 0) -> torch.Tensor:
    """x [M, K] (contiguous rows) @ dequant(q, s).T -> [M, N] in x's dtype (see module doc).
    act == 1: x is [M, 2K] (gate, up) and the product is silu(gate) * up @ W.T."""
    m = x.shape[0]
    if x.stride(-1) != 1:
        x = x.contiguous()
    if 1 <= m <= SKINNY_MAX_M:
        return fp8_small_m(x, q, s, block, act)
    if act:
        x = silu_and_mul(x)
    if (block is not None or x.dtype != torch.bfloat16
            or not scaled_mm_usable(x.device, q.shape[0], q.shape[1])):
        return fp8_w8a16(x, q, s, block)
    if m <= WIDE_MAX_M:
        return fp8_wide_m(x, q, s)
    return scaled_mm_rowwise(x, q, s)


def scaled_mm_usable(device: torch.device, n: int, k: int) -> bool:
    """`torch._scaled_mm` with rowwise scales runs here (probed once per device) and the
    shape meets its alignment (N, K multiples of 16)."""
    return n % 16 == 0 and k % 16 == 0 and _probe_scaled_mm(device.index or 0)


@cache
def _probe_scaled_mm(index: int) -> bool:
    """One small rowwise `_scaled_mm` against the reference; False if it errors (old
    torch, capability < 9.0) or disagrees."""
    from lmnb.runtime.quant.fp8_reference import fp8_linear_ref, quantize_per_channel

    dev = torch.device("cuda", index)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(17, 64, device=dev, generator=g).to(torch.bfloat16)
    q, s = quantize_per_channel(torch.randn(48, 64, device=dev, generator=g))
    try:
        y = scaled_mm_rowwise(x, q, s).float()
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        return False
    ref = fp8_linear_ref(x, q, s, None, None, quantize_input=True).float()
    return bool(((y - ref).norm() / ref.norm()).item() < 2e-2)


# ---------------------------------------------------------------------------- timing
COLD_BYTES = 256 * 2**20    # weight bytes one timing sweep streams (over 4x the 60 MB L2)
MAX_COPIES = 8
MIN_LAUNCHES = 16
TIMING_BYTES = 2**30


def time_graph(fns: list, replays: int = 5) -> float:
    """Median seconds per element of `fns` (closures that only launch device work, no
    host syncs): the list is run once to warm up, captured into one CUDA graph and the
    graph replayed `replays` times between device events, so launch gaps are those of a
    model step's graph and host overhead stays out."""
    import statistics

    from lmnb.runtime.cuda_graph import capture_stream

    stream = capture_stream(torch.device("cuda", torch.cuda.current_device()))
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        for f in fns:
            f()
    graph.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del graph
    return statistics.median(times) / len(fns)


def cold_copies(w: torch.Tensor, total_bytes: int = COLD_BYTES, most: int = MAX_COPIES) -> list[torch.Tensor]:
    """w and clones of it, together about `total_bytes`: a sweep over them reads every
    weight from HBM, as a model step does (its layers' weights are distinct)."""
    n = max(1, min(most, -(-total_bytes // max(1, w.nbytes))))
    return [w] + [w.clone() for _ in range(n - 1)]


def time_cold(launch, weights: list, replays: int = 5) -> float:
    """Seconds per `launch(w)` over distinct weight tensors, back to back in one graph:
    MIN_LAUNCHES launches, fewer (down to 4) for weights so large that fewer stream
    TIMING_BYTES."""
    w0 = weights[0][0] if isinstance(weights[0], (tuple, list)) else weights[0]   # (q, s) pairs too
    launches = min(MIN_LAUNCHES, max(4, TIMING_BYTES // max(1, w0.nbytes)))
    reps = -(-launches // len(weights))
    return time_graph([lambda w=w: launch(w) for w in weights] * reps, replays)


# ---------------------------------------------------------------------------- tile choice
_CHOSEN: dict[tuple, tuple] = {}


def _tuning_enabled() -> bool:
    return os.environ.get("LMNB_FP8_TUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def _choose(key: tuple, candidates: list[tuple], launch, q: torch.Tensor, out_shape, dtype) -> tuple:
    """The fastest candidate for `key`: each timed over distinct copies of the weight in one
    CUDA graph (weights from HBM, graph launch gaps, as in a decode step); the first
    candidate when timing is off, impossible (CPU interpreter) or while a CUDA graph is
    being captured (then not cached: a later eager call chooses)."""
    got = _CHOSEN.get(key)
    if got is not None:
        return got
    dev = q.device
    if dev.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return candidates[0]
    if len(candidates) == 1 or not _tuning_enabled() or dev.type != "cuda":
        _CHOSEN[key] = candidates[0]
        return candidates[0]
    stored = stored_choice(key, candidates)
    if stored is not None:
        _CHOSEN[key] = stored
        return stored
    copies = cold_copies(q)
    y = torch.empty(out_shape, dtype=dtype, device=dev)
    best, best_t = candidates[0], float("inf")
    for cand in candidates:
        try:
            t = time_cold(lambda w, cand=cand: launch(cand, w, y), copies)
        except Exception:  # noqa: BLE001, S112 - a config the compiler rejects is skipped
            continue
        if t < best_t:
            best, best_t = cand, t
    del copies
    _CHOSEN[key] = best
    store_choice(key, best)
    return best


# The timed choices outlive the process: one JSON file per GPU model, toolkit, Triton and
# version of this module's source (a changed kernel is timed again), under the weight
# cache's directory (loader.cache_dir). A later load on the same machine skips the timing
# (the FP8 8B model's first requests spent ~30 s in it on an H200). A stored choice is used only
# if it is still among the candidates; an unreadable or unwritable file only costs the timing.
_STORED: dict[str, dict] = {}


@cache
def _choice_tag() -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    src = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    tag = "-".join((dev, f"cuda{torch.version.cuda}", f"triton{triton.__version__}", src))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def _choice_file() -> Path:
    from lmnb.runtime.loader import cache_dir

    return cache_dir() / f"fp8_choices-{_choice_tag()}.json"


def _stored() -> dict:
    path = str(_choice_file())
    if path not in _STORED:
        try:
            _STORED[path] = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            _STORED[path] = {}
    return _STORED[path]


def _key_text(key: tuple) -> str:
    """The key without the device (the file is per GPU model already)."""
    return "|".join(str(part) for part in key if not isinstance(part, torch.device))


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list) else x


def stored_choice(key: tuple, candidates: list[tuple]) -> tuple | None:
    got = _stored().get(_key_text(key))
    if got is None:
        return None
    got = _as_tuple(got)
    return got if got in candidates else None


def store_choice(key: tuple, choice: tuple) -> None:
    """Add a choice to the file (merged with what other processes wrote since it was read)."""
    table = _stored()
    table[_key_text(key)] = choice
    path = _choice_file()
    try:
        with contextlib.suppress(OSError, ValueError):
            table.update({k: v for k, v in json.loads(path.read_text()).items() if k not in table})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=0, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def chosen_configs() -> dict[str, tuple]:
    """What the timed choice picked so far (for benchmarks' records)."""
    return {"/".join(str(p) for p in k[:5] + k[7:]): v for k, v in _CHOSEN.items()}


@cache
def _sm_count() -> int:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).multi_processor_count
    return 132
