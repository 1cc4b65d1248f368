"""Triton kernels for attention over the token-level KV pool.

Every K/V row is found through `req_to_token[req_pool_indices[b], pos]`, so the slots of
one request may lie anywhere in the pool. Softmax runs in base 2 (`scale * log2(e)` is
folded into the logits) with fp32 accumulation; fp32 inputs use IEEE dots so the fp32
tests can be tight.

- `store_kv`: one launch writes this step's K and V rows at `out_cache_loc`.

FP8 pools (`KVPool.quantized`, see `lmnb.runtime.kv_dtype`): pass `k_scale` / `v_scale`
(fp32 `[slots, KVH]`). The store quantizes each (token, head) row with its own scale
(`kernels.kv_quant`); attention loads the e4m3 codes (half the bytes of bf16), casts them
to the query dtype (exact: every e4m3 value is a bf16 value) and applies the scales per
key: the logits' columns are multiplied by the K scales, and the probabilities by the V
scales before the P @ V dot, so no tile is ever rescaled.
- `extend_attention`: queries of the new tokens of each request attend to its cached
  prefix plus the new tokens, causally. The new slots are already in `req_to_token` and
  already stored, so one loop over key positions covers both; only key blocks that cross
  the diagonal pay for the causal mask.
- `decode_attention`: one query per request, split-K (flash decoding): the context is cut
  into `num_splits` ranges computed in parallel, each leaving a partial output and its
  log-sum-exp, then a second kernel merges them. One program serves all query heads of a
  KV head (GQA), so K/V are read once per group; the programs of one request's KV heads
  are launched side by side (`DECODE_HEADS_FIRST`). `num_splits == 1` writes the output
  directly and skips the merge.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from lmnb.runtime.kernels.kv_quant import quantize_store
from lmnb.runtime.kernels.pdl import launch_kwargs, pdl_enabled, pdl_start

LOG2E = 1.4426950408889634


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


# ---------------------------------------------------------------------------- store

@triton.jit
def _store_kv_kernel(K, V, KBuf, VBuf, KScale, VScale, Loc, stride_kt, stride_kh, stride_vt,
                     stride_vh, stride_bt, stride_bh, stride_st, num_heads, head_dim,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, QUANT: tl.constexpr,
                     PDL: tl.constexpr):
    pdl_start(PDL)
    t = tl.program_id(0)
    slot = tl.load(Loc + t).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = offs_h < num_heads
    mask = mask_h[:, None] & (offs_d[None, :] < head_dim)
    src_k = K + t.to(tl.int64) * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :]
    src_v = V + t.to(tl.int64) * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :]
    dst = slot * stride_bt + offs_h[:, None] * stride_bh + offs_d[None, :]
    k = tl.load(src_k, mask=mask, other=0.0)
    v = tl.load(src_v, mask=mask, other=0.0)
    if QUANT:
        quantize_store(k, KBuf + dst, KScale + slot * stride_st + offs_h, mask, mask_h)
        quantize_store(v, VBuf + dst, VScale + slot * stride_st + offs_h, mask, mask_h)
    else:
        tl.store(KBuf + dst, k.to(KBuf.dtype.element_ty), mask=mask)
        tl.store(VBuf + dst, v.to(VBuf.dtype.element_ty), mask=mask)


def store_kv(k_buf: torch.Tensor, v_buf: torch.Tensor, loc: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor, k_scale: torch.Tensor | None = None,
             v_scale: torch.Tensor | None = None) -> None:
    """k_buf[loc] = k; v_buf[loc] = v (cast to the pool dtype), one launch. With scales
    (an FP8 pool): the rows are quantized, their scales written to k_scale / v_scale[loc]."""
    t, h, d = k.shape
    if t == 0:
        return
    k, v = _last_dim_contiguous(k), _last_dim_contiguous(v)
    quant = k_scale is not None
    ks, vs = (k_scale, v_scale) if quant else (k_buf, v_buf)
    _store_kv_kernel[(t,)](
        k, v, k_buf, v_buf, ks, vs, loc, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_buf.stride(0), k_buf.stride(1), ks.stride(0) if quant else 0, h, d,
        BLOCK_H=triton.next_power_of_2(h), BLOCK_D=triton.next_power_of_2(d), QUANT=quant,
        PDL=pdl_enabled(k.device), num_warps=2, **launch_kwargs(k.device),
    )


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# ---------------------------------------------------------------------------- extend

# e4m3 codes -> fp16 / bf16 (exact), four codes (one 32-bit word) a call
_WIDEN_F16 = tl.constexpr(
    "{ .reg .b16 lo, hi; .reg .b32 t0, t1; mov.b32 {lo, hi}, $4; "
    "cvt.rn.f16x2.e4m3x2 t0, lo; cvt.rn.f16x2.e4m3x2 t1, hi; "
    "mov.b32 {$0, $1}, t0; mov.b32 {$2, $3}, t1; }")
_WIDEN_BF16 = tl.constexpr(
    "{ .reg .b16 lo, hi, a0, a1, a2, a3; .reg .b32 t0, t1; .reg .f32 f0, f1, f2, f3; "
    "mov.b32 {lo, hi}, $4; cvt.rn.f16x2.e4m3x2 t0, lo; cvt.rn.f16x2.e4m3x2 t1, hi; "
    "mov.b32 {a0, a1}, t0; mov.b32 {a2, a3}, t1; cvt.f32.f16 f0, a0; cvt.f32.f16 f1, a1; "
    "cvt.f32.f16 f2, a2; cvt.f32.f16 f3, a3; cvt.rn.bf16.f32 $0, f0; cvt.rn.bf16.f32 $1, f1; "
    "cvt.rn.bf16.f32 $2, f2; cvt.rn.bf16.f32 $3, f3; }")


@triton.jit
def _load_rows(X, slots, stride_t, row_off, offs_d, mask_n, mask_d, dtype: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, WORDS: tl.constexpr):
    """[BLOCK_N, BLOCK_D] rows `slots` of X (at `row_off` within a slot) as `dtype`.
    WORDS (an FP8 pool, head_dim == BLOCK_D, row bytes a multiple of 16): the codes are
    read as 32-bit words and widened in registers by inline PTX. A plain `.to()` lets the
    layout passes move the dot's operand layout onto the 8-bit codes, and an 8-bit operand
    whose reduction axis is not contiguous in memory (V's keys) is then read from shared
    memory one byte at a time: the FP8 decode kernel ran at 40% of HBM for it. Widened
    here, the tile reaches the dot as 16-bit values (ldmatrix), as a bf16 pool's does."""
    if WORDS:
        W = (X + row_off).to(tl.pointer_type(tl.int32), bitcast=True)
        offs_w = tl.arange(0, BLOCK_D // 4)
        w = tl.load(W + slots[:, None] * (stride_t // 4) + offs_w[None, :], mask=mask_n[:, None],
                    other=0)
        if dtype == tl.float16:
            a0, a1, a2, a3 = tl.inline_asm_elementwise(_WIDEN_F16, "=h,=h,=h,=h,r", [w],
                                                       dtype=(tl.float16,) * 4, is_pure=True,
                                                       pack=1)
        else:
            a0, a1, a2, a3 = tl.inline_asm_elementwise(_WIDEN_BF16, "=h,=h,=h,=h,r", [w],
                                                       dtype=(tl.bfloat16,) * 4, is_pure=True,
                                                       pack=1)
        # [N, D/4, 2, 2] with code 4j + 2r + s at [j, r, s]
        return tl.reshape(tl.join(tl.join(a0, a2), tl.join(a1, a3)), (BLOCK_N, BLOCK_D))
    else:
        x = tl.load(X + slots[:, None] * stride_t + row_off + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        return x.to(dtype)


@triton.jit
def _attend_block(q, acc, m_i, l_i, K, V, KS, VS, kv_row, kvh, n0, kv_end, q_pos, offs_d,
                  mask_d, stride_kt, stride_kh, stride_vt, stride_vh, stride_st, sm_scale_log2,
                  BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                  QUANT: tl.constexpr, WORDS: tl.constexpr = False,
                  BLOCK_D: tl.constexpr = 0):
    """One online-softmax step over key positions n0 .. n0+BLOCK_N of one request.
    QUANT: K/V are e4m3 codes, KS / VS their per-(slot, head) scales; WORDS: read them as
    words (see `_load_rows`)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < kv_end
    slots = tl.load(kv_row + offs_n, mask=mask_n, other=0).to(tl.int64)
    if WORDS:
        k = _load_rows(K, slots, stride_kt, kvh * stride_kh, offs_d, mask_n, mask_d, q.dtype,
                       BLOCK_N, BLOCK_D, True)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    else:
        k = tl.load(K + slots[None, :] * stride_kt + kvh * stride_kh + offs_d[:, None],
                    mask=mask_n[None, :] & mask_d[:, None], other=0.0)
        qk = tl.dot(q, k.to(q.dtype), input_precision=DOT_PREC)
    if QUANT:
        ks = tl.load(KS + slots * stride_st + kvh, mask=mask_n, other=0.0)
        qk = qk * (ks * sm_scale_log2)[None, :]
    else:
        qk = qk * sm_scale_log2
    keep = mask_n[None, :]
    if CAUSAL:
        keep = keep & (offs_n[None, :] <= q_pos[:, None])
    qk = tl.where(keep, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if WORDS:
        v = _load_rows(V, slots, stride_vt, kvh * stride_vh, offs_d, mask_n, mask_d, q.dtype,
                       BLOCK_N, BLOCK_D, True)
    else:
        v = tl.load(V + slots[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)
    if QUANT:
        vs = tl.load(VS + slots * stride_st + kvh, mask=mask_n, other=0.0)
        if q.dtype == tl.float16:
            # fp16 operands (a bf16 model's q cast once, see F16 in decode_attention): the
            # V scales relative to the block's largest keep p * scale out of fp16 subnormals
            vmax = tl.max(vs, 0)
            vmax = tl.where(vmax > 0, vmax, 1.0)
            pv = (p * (vs / vmax)[None, :]).to(q.dtype)
            acc = acc * alpha[:, None] + tl.dot(pv, v.to(q.dtype), input_precision=DOT_PREC) * vmax
        else:
            pv = (p * vs[None, :]).to(q.dtype)
            acc = acc * alpha[:, None] + tl.dot(pv, v.to(q.dtype), input_precision=DOT_PREC)
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PREC)
    return acc, m_new, l_i


@triton.jit
def _extend_kernel(Q, K, V, KS, VS, O, ReqToToken, ReqPoolIdx, PrefixLens, ExtendLens,
                   ExtendStarts, sm_scale_log2, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_vt, stride_vh, stride_st, stride_ot, stride_oh, stride_r2t, head_dim,
                   GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr, QUANT: tl.constexpr,
                   WORDS: tl.constexpr = False):
    b = tl.program_id(0)
    h = tl.program_id(1)
    mb = tl.program_id(2)
    kvh = h // GROUP
    ext = tl.load(ExtendLens + b).to(tl.int32)
    pre = tl.load(PrefixLens + b).to(tl.int32)
    q_start = tl.load(ExtendStarts + b).to(tl.int64)
    kv_row = ReqToToken + tl.load(ReqPoolIdx + b).to(tl.int64) * stride_r2t

    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < ext
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    q = tl.load(Q + (q_start + offs_m[:, None]) * stride_qt + h * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    q_pos = pre + offs_m

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # blocks past this request's new tokens do no work (kv_end = 0) and store nothing
    kv_end = tl.where(mb * BLOCK_M < ext, tl.minimum(pre + ext, pre + (mb + 1) * BLOCK_M), 0)
    # keys every row of this block may see: no causal mask needed
    full_end = tl.minimum(pre + mb * BLOCK_M, kv_end)
    full_end_aligned = (full_end // BLOCK_N) * BLOCK_N
    for n0 in range(0, full_end_aligned, BLOCK_N):
        acc, m_i, l_i = _attend_block(q, acc, m_i, l_i, K, V, KS, VS, kv_row, kvh, n0, kv_end,
                                      q_pos, offs_d, mask_d, stride_kt, stride_kh, stride_vt,
                                      stride_vh, stride_st, sm_scale_log2, BLOCK_N, False,
                                      DOT_PREC, QUANT, WORDS, BLOCK_D)
    for n0 in range(full_end_aligned, kv_end, BLOCK_N):
        acc, m_i, l_i = _attend_block(q, acc, m_i, l_i, K, V, KS, VS, kv_row, kvh, n0, kv_end,
                                      q_pos, offs_d, mask_d, stride_kt, stride_kh, stride_vt,
                                      stride_vh, stride_st, sm_scale_log2, BLOCK_N, True,
                                      DOT_PREC, QUANT, WORDS, BLOCK_D)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(O + (q_start + offs_m[:, None]) * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


_EXTEND_SMALL = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
_EXTEND_NARROW = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
_EXTEND_WIDE = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}


def _extend_small_tiles(head_dim: int, dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or head_dim > 128


def extend_config(head_dim: int, dtype: torch.dtype, max_extend: int, bs: int = 1,
                  num_heads: int = 1, num_sms: int = 132) -> dict:
    """Block shapes for the extend kernel, from the sweeps in bench/KERNELS.md (H100):
    4 warps with a 3-stage pipeline; 128-row query blocks only while they still give two
    programs per SM (a long prefix under few new tokens is otherwise starved of
    parallelism), else 64; smaller tiles for fp32 (shared memory)."""
    if _extend_small_tiles(head_dim, dtype):
        return dict(_EXTEND_SMALL)
    wide = max_extend > 64 and bs * num_heads * triton.cdiv(max_extend, 128) >= 2 * num_sms
    return dict(_EXTEND_WIDE if wide else _EXTEND_NARROW)


def extend_configs(head_dim: int, dtype: torch.dtype) -> list[dict]:
    """Every shape `extend_config` may return for this head_dim and dtype."""
    if _extend_small_tiles(head_dim, dtype):
        return [dict(_EXTEND_SMALL)]
    return [dict(_EXTEND_NARROW), dict(_EXTEND_WIDE)]


@functools.lru_cache(maxsize=8)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def extend_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                     o: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                     prefix_lens: torch.Tensor, extend_lens: torch.Tensor,
                     extend_starts: torch.Tensor, max_extend: int, scale: float,
                     config: dict | None = None, k_scale: torch.Tensor | None = None,
                     v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of the new tokens over prefix + new tokens, all read through
    req_to_token (the new K/V must already be stored). q, o: [T, H, D]. k_scale /
    v_scale: an FP8 pool's scales (see the module docstring)."""
    bs = req_pool_indices.numel()
    if bs == 0 or max_extend == 0:
        return o
    _, h, d = q.shape
    kvh = k_buf.shape[1]
    cfg = dict(config or extend_config(d, q.dtype, max_extend, bs, h, _num_sms(q.device)))
    grid = (bs, h, triton.cdiv(max_extend, cfg["BLOCK_M"]))
    q = _last_dim_contiguous(q)
    quant = k_scale is not None
    words = (quant and FP8_EXTEND_WORDS and _words_ok(k_buf, d, q.dtype)
             and _words_ok(v_buf, d, q.dtype))
    ks, vs = (k_scale, v_scale) if quant else (k_buf, v_buf)
    _extend_kernel[grid](
        q, k_buf, v_buf, ks, vs, o, req_to_token, req_pool_indices, prefix_lens, extend_lens,
        extend_starts, scale * LOG2E, q.stride(0), q.stride(1), k_buf.stride(0),
        k_buf.stride(1), v_buf.stride(0), v_buf.stride(1), ks.stride(0) if quant else 0,
        o.stride(0), o.stride(1), req_to_token.stride(0), d, GROUP=h // kvh,
        BLOCK_D=triton.next_power_of_2(d), DOT_PREC=_dot_precision(q.dtype), QUANT=quant,
        WORDS=words, **cfg,
    )
    return o


# ---------------------------------------------------------------------------- decode

@triton.jit
def _decode_split_kernel(Q, K, V, KS, VS, O, MidO, MidLse, ReqToToken, ReqPoolIdx, SeqLens,
                         sm_scale_log2, stride_qt, stride_qh, stride_kt, stride_kh,
                         stride_vt, stride_vh, stride_st, stride_ot, stride_oh, stride_mb,
                         stride_mh, stride_ms, stride_lb, stride_lh, stride_r2t, num_splits,
                         head_dim, GROUP: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DIRECT: tl.constexpr,
                         DOT_PREC: tl.constexpr, QUANT: tl.constexpr, F16: tl.constexpr,
                         PDL: tl.constexpr, WORDS: tl.constexpr = False,
                         HEADS_FIRST: tl.constexpr = False):
    pdl_start(PDL)
    if HEADS_FIRST:   # the KV heads of one request run side by side (see DECODE_HEADS_FIRST)
        kvh = tl.program_id(0)
        b = tl.program_id(1)
    else:
        b = tl.program_id(0)
        kvh = tl.program_id(1)
    s = tl.program_id(2)
    seq_len = tl.load(SeqLens + b).to(tl.int32)
    kv_row = ReqToToken + tl.load(ReqPoolIdx + b).to(tl.int64) * stride_r2t
    split_len = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = s * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_g = tl.arange(0, BLOCK_H)
    heads = kvh * GROUP + offs_g
    mask_h = offs_g < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    q = tl.load(Q + b.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)
    if F16:   # e4m3 -> fp16 is one instruction per pair, -> bf16 is several
        q = q.to(tl.float16)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        acc, m_i, l_i = _attend_block(q, acc, m_i, l_i, K, V, KS, VS, kv_row, kvh, n0, end,
                                      heads, offs_d, mask_d, stride_kt, stride_kh, stride_vt,
                                      stride_vh, stride_st, sm_scale_log2, BLOCK_N, False,
                                      DOT_PREC, QUANT, WORDS, BLOCK_D)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    mask_o = mask_h[:, None] & mask_d[None, :]
    if DIRECT:
        tl.store(O + b.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=mask_o)
    else:
        # an empty split leaves lse = -inf, which the merge weighs as zero
        lse = tl.where(l_i > 0, m_i + tl.log2(l_i), float("-inf"))
        tl.store(MidO + b.to(tl.int64) * stride_mb + heads[:, None] * stride_mh
                 + s * stride_ms + offs_d[None, :], out, mask=mask_o)
        tl.store(MidLse + b.to(tl.int64) * stride_lb + heads * stride_lh + s, lse, mask=mask_h)


@triton.jit
def _decode_merge_kernel(O, MidO, MidLse, stride_ot, stride_oh, stride_mb, stride_mh,
                         stride_ms, stride_lb, stride_lh, num_splits, head_dim,
                         BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    """All splits of one (request, head) in one tile: a single round trip to memory, not
    one per split (a loop over splits made batch-1 decode latency-bound)."""
    pdl_start(PDL)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    lse = tl.load(MidLse + b * stride_lb + h * stride_lh + offs_s, mask=mask_s,
                  other=float("-inf"))
    o_s = tl.load(MidO + b * stride_mb + h * stride_mh + offs_s[:, None] * stride_ms
                  + offs_d[None, :], mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    # a finite floor: an all-empty row (seq_len 0, e.g. graph padding) gives zeros, not NaN
    m = tl.maximum(tl.max(lse, 0), -1e30)
    w = tl.exp2(lse - m)
    total = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o_s, 0) / tl.where(total > 0, total, 1.0)
    tl.store(O + b * stride_ot + h * stride_oh + offs_d, out.to(O.dtype.element_ty), mask=mask_d)


DECODE_BLOCK_N = 64
# the decode kernel over an FP8 pool: (fp16 operands, BLOCK_N, num_warps, num_stages, words:
# K/V read as 32-bit words and widened in registers, see `_load_rows`; a 4-tuple means
# words); the best of 6 in bench/fp8_bench.py's kv_kernels sweep (H200, bench/RESULTS.md,
# 2026-12-02, eighth session): 0.93x the bf16 kernel's time at 256 requests x 800 tokens
FP8_DECODE = (True, 64, 2, 3, True)
# the decode kernel's grid: (KV heads, requests, splits) when true, so the programs of one
# request's KV heads are launched together and read the same slots (one slot holds every
# head's row, and its scales share one sector) at about the same time; (requests, KV heads,
# splits) when false. Heads first: the same bits, 5.5% less time over an FP8 pool and 3.8%
# over bf16 at 256 mixed-length requests, within 0.5% elsewhere (bench/RESULTS.md, H200,
# 2026-12-02, night session)
DECODE_HEADS_FIRST = True
# the extend kernel over an FP8 pool reads K/V as words too (see `_load_rows`)
FP8_EXTEND_WORDS = True


def _words_ok(k_buf: torch.Tensor, head_dim: int, q_dtype: torch.dtype) -> bool:
    """`_load_rows`'s word path: 16-bit operands, rows of a power-of-two head_dim,
    16-byte aligned; not under Triton's interpreter (it runs no inline PTX)."""
    if q_dtype not in (torch.float16, torch.bfloat16) or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return (head_dim == triton.next_power_of_2(head_dim) and head_dim % 16 == 0
            and k_buf.stride(-1) == 1 and k_buf.stride(0) % 16 == 0 and k_buf.stride(1) % 16 == 0)


def decode_num_splits(bs: int, num_kv_heads: int, max_len: int, num_sms: int,
                      max_splits: int = 64, min_tokens: int = 2 * DECODE_BLOCK_N) -> int:
    """Enough splits for about two programs per SM, none shorter than `min_tokens`."""
    want = math.ceil(2 * num_sms / max(1, bs * num_kv_heads))
    cap = math.ceil(max_len / min_tokens)
    return max(1, min(want, cap, max_splits))


def decode_buffers(bs: int, num_heads: int, num_splits: int, head_dim: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 partial outputs [bs, H, splits, D] and log-sum-exps [bs, H, splits]."""
    mid_o = torch.empty((bs, num_heads, num_splits, head_dim), dtype=torch.float32, device=device)
    mid_lse = torch.empty((bs, num_heads, num_splits), dtype=torch.float32, device=device)
    return mid_o, mid_lse


def decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                     o: torch.Tensor, req_to_token: torch.Tensor,
                     req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, scale: float,
                     num_splits: int, mid_o: torch.Tensor | None = None,
                     mid_lse: torch.Tensor | None = None, block_n: int = DECODE_BLOCK_N,
                     num_warps: int = 4, num_stages: int = 2, k_scale: torch.Tensor | None = None,
                     v_scale: torch.Tensor | None = None, fp8_config: tuple | None = None,
                     heads_first: bool | None = None) -> torch.Tensor:
    """One query per request over its whole context. q, o: [bs, H, D]. With
    num_splits > 1, mid_o / mid_lse (see `decode_buffers`, at least bs x H x splits) hold
    the partial results; no host sync happens here. k_scale / v_scale: an FP8 pool's
    scales (see the module docstring); their kernel shape is `fp8_config` (default
    FP8_DECODE: whether a bf16 q is cast to fp16 for the dots, BLOCK_N, warps, stages and
    optionally whether K/V are read as words, default yes where `_words_ok`).
    The fp16 cast keeps |q| < 65504 (far above any q of a working model). heads_first: the
    grid order (default DECODE_HEADS_FIRST)."""
    bs, h, d = q.shape
    if bs == 0:
        return o
    f16 = words = False
    if k_scale is not None:
        f16, block_n, num_warps, num_stages, *rest = fp8_config or FP8_DECODE
        f16 = f16 and q.dtype == torch.bfloat16
        words = ((rest[0] if rest else True) and _words_ok(k_buf, d, q.dtype)
                 and _words_ok(v_buf, d, q.dtype))
    kvh = k_buf.shape[1]
    group = h // kvh
    direct = num_splits == 1
    if direct:
        mid_o = mid_lse = o  # unused by the kernel; any tensor satisfies the signature
    elif mid_o is None or mid_lse is None:
        mid_o, mid_lse = decode_buffers(bs, h, num_splits, d, q.device)
    q = _last_dim_contiguous(q)
    block_d = triton.next_power_of_2(d)
    quant = k_scale is not None
    ks, vs = (k_scale, v_scale) if quant else (k_buf, v_buf)
    heads_first = DECODE_HEADS_FIRST if heads_first is None else heads_first
    grid = (kvh, bs, num_splits) if heads_first else (bs, kvh, num_splits)
    _decode_split_kernel[grid](
        q, k_buf, v_buf, ks, vs, o, mid_o, mid_lse, req_to_token, req_pool_indices, seq_lens,
        scale * LOG2E, q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1),
        v_buf.stride(0), v_buf.stride(1), ks.stride(0) if quant else 0, o.stride(0), o.stride(1),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2) if not direct else 0,
        mid_lse.stride(0), mid_lse.stride(1), req_to_token.stride(0), num_splits, d,
        GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        BLOCK_D=block_d, DIRECT=direct, DOT_PREC=_dot_precision(q.dtype), QUANT=quant, F16=f16,
        PDL=pdl_enabled(q.device), WORDS=words, HEADS_FIRST=heads_first, num_warps=num_warps,
        num_stages=num_stages, **launch_kwargs(q.device),
    )
    if not direct:
        _decode_merge_kernel[(bs, h)](
            o, mid_o, mid_lse, o.stride(0), o.stride(1), mid_o.stride(0), mid_o.stride(1),
            mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1), num_splits, d,
            BLOCK_S=max(2, triton.next_power_of_2(num_splits)), BLOCK_D=block_d,
            PDL=pdl_enabled(q.device), num_warps=4 if num_splits * block_d >= 4096 else 2,
            **launch_kwargs(q.device),
        )
    return o
