"""FP8 (e4m3) weight GEMMs in Triton, and the dispatch between them and `torch._scaled_mm`.
References: `lmnb.runtime.quant.fp8_reference` (fp8_linear_ref, quantize_rows_ref).

    fp8_matmul(x [M, K], q [N, K] fp8, s, block) -> y [M, N] in x's dtype
      M <= 4     fp8_gemv: weight-only GEMV. Each program owns BLOCK_N output rows over the
                 whole K (no split-K: small BLOCK_N gives N/BLOCK_N >= 256 programs on the
                 8B shapes, enough to keep 132 SMs streaming); the fp8 tile is upcast in
                 registers, accumulated elementwise in fp32 and reduced once at the end;
                 the per-channel scale is applied once per output.
      M <= 16    fp8_w8a16: tl.dot over bf16 activations and upcast fp8 tiles (skinny
                 tiles, BLOCK_M 16); also every M for block scales or without _scaled_mm.
                 (The timed choice below also tries _scaled_mm for these M.)
      M > 16     per-channel weights: activations quantized per token (quantize_rows),
                 then torch._scaled_mm with rowwise scales on the FP8 tensor cores.
Block scales (bn x bk, 128 x 128 in checkpoints) are read per tile (GEMV: one scale per
column of the tile) inside the K loop.

Every launch has a fixed grid and output shape for a given M, no host sync: the calls are
CUDA-graph safe. For M <= 16 the kernel (GEMV, skinny GEMM or _scaled_mm; up to 4 rows any may win)
and its tile config come from a small timed choice on first use per shape and row count
(eager calls only, never while a graph is being captured; `LMNB_FP8_TUNE=0`: the
defaults above), cached for the process.
"""
from __future__ import annotations

import os
from functools import cache

import torch
import triton
import triton.language as tl

GEMV_MAX_M = 4
SKINNY_MAX_M = 16
FP8_MAX = 448.0


# ---------------------------------------------------------------------------- kernels
@triton.jit
def _gemv_row(acc, X, row, M, stride_xm, offs_k, k_ok, wf, EVEN_K: tl.constexpr):
    if EVEN_K:
        x = tl.load(X + row * stride_xm + offs_k, mask=(offs_k * 0 + row) < M, other=0.0)
    else:
        x = tl.load(X + row * stride_xm + offs_k, mask=k_ok & (row < M), other=0.0)
    return acc + wf * x.to(tl.float32)[None, :]


@triton.jit
def _load_w(w_ptr, n_ok, offs_k, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        return tl.load(w_ptr, mask=n_ok[:, None], other=0.0)
    return tl.load(w_ptr, mask=n_ok[:, None] & (offs_k < K)[None, :], other=0.0)


@triton.jit
def _fp8_gemv_kernel(X, W, S, Y, M, N, K, stride_xm, stride_wn, stride_ym, stride_sn,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     SB_N: tl.constexpr, SB_K: tl.constexpr, EVEN_K: tl.constexpr,
                     PREFETCH: tl.constexpr):
    """Y[m, n] = sum_k X[m, k] * W[n, k] * scale, M <= BLOCK_M <= 4. SB_N == 0: S is [N]
    (per channel); else S is [cdiv(N, SB_N), cdiv(K, SB_K)] block scales. PREFETCH issues
    the next weight tile's loads before the current tile's math (twice the bytes in
    flight per program; the compiler does not pipeline loads that feed no dot)."""
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    n_ok = rn < N
    w_ptr = W + rn.to(tl.int64)[:, None] * stride_wn + rk[None, :]
    acc0 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    if PREFETCH:
        w_next = _load_w(w_ptr, n_ok, rk, K, EVEN_K)
    else:
        w_next = 0
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + rk
        k_ok = offs_k < K
        if PREFETCH:
            w = w_next
            w_next = tl.load(w_ptr + BLOCK_K, mask=n_ok[:, None] & (offs_k + BLOCK_K < K)[None, :],
                             other=0.0)
        else:
            w = _load_w(w_ptr, n_ok, offs_k, K, EVEN_K)
        wf = w.to(tl.float32)
        if SB_N > 0:
            s = tl.load(S + (pid * BLOCK_N // SB_N) * stride_sn + offs_k // SB_K,
                        mask=k_ok, other=0.0)
            wf = wf * s[None, :]
        acc0 = _gemv_row(acc0, X, 0, M, stride_xm, offs_k, k_ok, wf, EVEN_K)
        if BLOCK_M > 1:
            acc1 = _gemv_row(acc1, X, 1, M, stride_xm, offs_k, k_ok, wf, EVEN_K)
        if BLOCK_M > 2:
            acc2 = _gemv_row(acc2, X, 2, M, stride_xm, offs_k, k_ok, wf, EVEN_K)
            acc3 = _gemv_row(acc3, X, 3, M, stride_xm, offs_k, k_ok, wf, EVEN_K)
        w_ptr += BLOCK_K
    if SB_N == 0:
        scale = tl.load(S + rn, mask=n_ok, other=0.0)
    else:
        scale = tl.full([BLOCK_N], 1.0, dtype=tl.float32)
    out_ty = Y.dtype.element_ty
    tl.store(Y + rn, (tl.sum(acc0, axis=1) * scale).to(out_ty), mask=n_ok)
    if BLOCK_M > 1:
        tl.store(Y + stride_ym + rn, (tl.sum(acc1, axis=1) * scale).to(out_ty), mask=n_ok & (M > 1))
    if BLOCK_M > 2:
        tl.store(Y + 2 * stride_ym + rn, (tl.sum(acc2, axis=1) * scale).to(out_ty), mask=n_ok & (M > 2))
        tl.store(Y + 3 * stride_ym + rn, (tl.sum(acc3, axis=1) * scale).to(out_ty), mask=n_ok & (M > 3))


@triton.jit
def _fp8_w8a16_kernel(X, W, S, Y, M, N, K, stride_xm, stride_wn, stride_ym, stride_sn,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      SB_N: tl.constexpr, SB_K: tl.constexpr, EVEN_K: tl.constexpr,
                      GROUP_M: tl.constexpr):
    """Y = X @ dequant(W).T with tl.dot on X's dtype; fp8 tiles upcast after the load.
    Block scales: BLOCK_N divides SB_N and BLOCK_K divides SB_K, so a tile has one scale."""
    pid = tl.program_id(0)
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
    x_ptr = X + rm.to(tl.int64)[:, None] * stride_xm + rk[None, :]
    w_ptr = W + rn.to(tl.int64)[None, :] * stride_wn + rk[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptr, mask=m_ok[:, None], other=0.0)
            b = tl.load(w_ptr, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = (k0 + rk) < K
            a = tl.load(x_ptr, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptr, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        b = b.to(a.dtype)
        if SB_N > 0:
            s = tl.load(S + (pid_n * BLOCK_N // SB_N) * stride_sn + k0 // SB_K)
            acc += tl.dot(a, b) * s
        else:
            acc = tl.dot(a, b, acc)
        x_ptr += BLOCK_K
        w_ptr += BLOCK_K
    if SB_N == 0:
        acc = acc * tl.load(S + rn, mask=n_ok, other=0.0)[None, :]
    y_ptr = Y + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :]
    tl.store(y_ptr, acc.to(Y.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _quantize_rows_kernel(X, Q, S, K, stride_x, stride_q, BLOCK: tl.constexpr):
    """Per-row absmax scale (amax / 448) and the row rounded to e4m3."""
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
def _scale_args(s: torch.Tensor, block):
    if block is None:
        return 0, 0, 0
    return block[0], block[1], s.stride(0)


def _launch_gemv(x, q, s, block, y, cfg) -> None:
    m, k = x.shape
    n = q.shape[0]
    bn, bk, warps, prefetch = cfg
    sb_n, sb_k, stride_sn = _scale_args(s, block)
    _fp8_gemv_kernel[(triton.cdiv(n, bn),)](
        x, q, s, y, m, n, k, x.stride(0), q.stride(0), y.stride(0), stride_sn,
        BLOCK_M=_gemv_rows(m), BLOCK_N=bn, BLOCK_K=bk, SB_N=sb_n, SB_K=sb_k,
        EVEN_K=k % bk == 0, PREFETCH=prefetch, num_warps=warps)


def _launch_w8a16(x, q, s, block, y, cfg) -> None:
    m, k = x.shape
    n = q.shape[0]
    bm, bn, bk, warps, stages = cfg
    sb_n, sb_k, stride_sn = _scale_args(s, block)
    _fp8_w8a16_kernel[(triton.cdiv(m, bm) * triton.cdiv(n, bn),)](
        x, q, s, y, m, n, k, x.stride(0), q.stride(0), y.stride(0), stride_sn,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SB_N=sb_n, SB_K=sb_k, EVEN_K=k % bk == 0,
        GROUP_M=8, num_warps=warps, num_stages=stages)


def _gemv_rows(m: int) -> int:
    return 1 if m == 1 else (2 if m == 2 else 4)


def fp8_gemv(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, block=None,
             config: tuple[int, int, int, bool] | None = None) -> torch.Tensor:
    """x [M, K] (M <= 4), q [N, K] fp8, s per channel [N] or block -> y [M, N] in x's dtype.
    config = (BLOCK_N, BLOCK_K, num_warps, prefetch); None: the default."""
    m, k = x.shape
    if not 1 <= m <= GEMV_MAX_M:
        raise ValueError(f"fp8_gemv takes 1..{GEMV_MAX_M} rows, got {m}")
    y = torch.empty((m, q.shape[0]), dtype=x.dtype, device=x.device)
    _launch_gemv(x, q, s, block, y, config or gemv_configs(_gemv_rows(m), q.shape[0], k, block)[0])
    return y


def gemv_configs(bm: int, n: int, k: int, block) -> list[tuple[int, int, int, bool]]:
    """Candidate (BLOCK_N, BLOCK_K, warps, prefetch), the default first: per-thread fp32
    accumulators stay at <= 64 registers (BLOCK_M * BLOCK_N * BLOCK_K / threads), and the
    default BLOCK_N keeps >= ~2 programs per SM on the 8B shapes. Every tile with the
    next-tile prefetch, and the default also without it."""
    sms = _sm_count()
    default_bn = 16 if triton.cdiv(n, 16) >= 2 * sms else 8
    warps0 = 4 if bm == 1 else 8
    out = []
    for bn, bk, warps in ((default_bn, 512 // bm * warps0 // 4, warps0), (8, 512, 4), (16, 512, 4),
                          (16, 1024, 8), (32, 512, 8), (8, 1024, 4), (32, 256, 4), (64, 256, 8),
                          (4, 1024, 4), (8, 512, 8), (16, 256, 8), (4, 1024, 8), (8, 256, 4)):
        bk = min(bk, max(16, triton.next_power_of_2(k)))
        if bm * bn * bk > 64 * 32 * warps:
            continue
        if block is not None and block[0] % bn:
            continue
        if (bn, bk, warps, True) not in out:
            out.append((bn, bk, warps, True))
    return out[:1] + [out[0][:3] + (False,)] + out[1:]


def fp8_w8a16(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, block=None,
              config: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """Any M: tl.dot over x's dtype with the fp8 weight upcast per tile.
    config = (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); None: the default."""
    m, k = x.shape
    y = torch.empty((m, q.shape[0]), dtype=x.dtype, device=x.device)
    if m:
        _launch_w8a16(x, q, s, block, y, config or w8a16_configs(m, q.shape[0], k, block)[0])
    return y


def w8a16_configs(m: int, n: int, k: int, block) -> list[tuple[int, int, int, int, int]]:
    """Candidate (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), the default first."""
    if m > SKINNY_MAX_M:
        bm = 32 if m <= 32 else (64 if m <= 64 else 128)
        base = [(bm, 128, 64, 4 if bm < 128 else 8, 3)]
    else:
        sms = _sm_count()
        bn0 = 32 if triton.cdiv(n, 32) >= 2 * sms else 16
        base = [(16, bn0, 256, 4, 4), (16, 16, 256, 4, 4), (16, 32, 256, 4, 4), (16, 16, 128, 4, 4),
                (16, 32, 128, 4, 4), (16, 64, 128, 4, 3), (16, 16, 512, 4, 3)]
    out = []
    for bm, bn, bk, warps, stages in base:
        bk = min(bk, max(16, triton.next_power_of_2(k)))
        if block is not None:
            bk = min(bk, block[1])
            if block[0] % bn or block[1] % bk:
                continue
        cfg = (bm, bn, bk, warps, stages)
        if cfg not in out:
            out.append(cfg)
    return out


def fp8_small_m(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, block=None) -> torch.Tensor:
    """M <= 16 (decode): the GEMV (M <= 4), the skinny tl.dot kernel or (per-channel bf16,
    where it runs) per-token activations on torch._scaled_mm, whichever the timed choice
    finds faster for this shape (default: GEMV up to 4 rows)."""
    m, k = x.shape
    n = q.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    cands = [("gemv", c) for c in gemv_configs(_gemv_rows(m), n, k, block)] if m <= GEMV_MAX_M else []
    cands += [("w8a16", c) for c in w8a16_configs(m, n, k, block)]
    if block is None and x.dtype == torch.bfloat16 and scaled_mm_usable(x.device, n, k):
        cands.append(("scaled_mm", None))

    def launch(cand) -> None:
        if cand[0] == "scaled_mm":
            y.copy_(scaled_mm_rowwise(x, q, s))
        else:
            (_launch_gemv if cand[0] == "gemv" else _launch_w8a16)(x, q, s, block, y, cand[1])

    key = ("small", _gemv_rows(m) if m <= GEMV_MAX_M else m, n, k, block, x.dtype, x.device)
    chosen = _choose(key, cands, launch)
    if chosen[0] == "scaled_mm":
        return scaled_mm_rowwise(x, q, s)
    launch(chosen)
    return y


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (q [M, K] float8_e4m3fn, s [M, 1] fp32): per-token absmax scales."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m:
        block = min(2048, max(16, triton.next_power_of_2(k)))
        _quantize_rows_kernel[(m,)](x, q, s, k, x.stride(0), q.stride(0), BLOCK=block,
                                    num_warps=4 if block <= 1024 else 8)
    return q, s


def scaled_mm_rowwise(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x [M, K] bf16 -> per-token fp8 -> torch._scaled_mm with rowwise scales -> [M, N]."""
    xq, xs = quantize_rows(x)
    return torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=s.view(1, -1), out_dtype=x.dtype)


def fp8_matmul(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, block=None) -> torch.Tensor:
    """x [M, K] (contiguous rows) @ dequant(q, s).T -> [M, N] in x's dtype (see module doc)."""
    m = x.shape[0]
    if x.stride(-1) != 1:
        x = x.contiguous()
    if 1 <= m <= SKINNY_MAX_M:
        return fp8_small_m(x, q, s, block)
    if (block is not None or x.dtype != torch.bfloat16
            or not scaled_mm_usable(x.device, q.shape[0], q.shape[1])):
        return fp8_w8a16(x, q, s, block)
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


# ---------------------------------------------------------------------------- tile choice
_CHOSEN: dict[tuple, tuple] = {}


def _tuning_enabled() -> bool:
    return os.environ.get("LMNB_FP8_TUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def _choose(key: tuple, candidates: list[tuple], launch) -> tuple:
    """The fastest candidate for `key` (timed once, with L2 flushed before each run, so
    weights stream from HBM as they do in a model step); the first candidate when timing
    is off, impossible (CPU interpreter) or while a CUDA graph is being captured."""
    got = _CHOSEN.get(key)
    if got is not None:
        return got
    dev = key[-1]
    if (len(candidates) == 1 or not _tuning_enabled() or dev.type != "cuda"
            or torch.cuda.is_current_stream_capturing()):
        return candidates[0]
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)   # > L2; freed on return
    best, best_t = candidates[0], float("inf")
    for cfg in candidates:
        try:
            launch(cfg)  # compile and warm
        except Exception:  # noqa: BLE001, S112 - a config the compiler rejects is skipped
            continue
        times = []
        for _ in range(3):
            flush.zero_()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            launch(cfg)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        if min(times) < best_t:
            best, best_t = cfg, min(times)
    _CHOSEN[key] = best
    return best


def chosen_configs() -> dict[str, tuple]:
    """What the timed choice picked so far (for benchmarks' records)."""
    return {"/".join(str(p) for p in k[:5]): v for k, v in _CHOSEN.items()}


@cache
def _sm_count() -> int:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).multi_processor_count
    return 132
