"""Building blocks of the Llama family. Norms, rotary and the MLP activation go through
`lmnb.runtime.kernels`: fused Triton kernels on CUDA tensors, the plain-torch references
(the CPU path, numerically the unfused HF code) elsewhere. Numerics follow HF
transformers so greedy outputs match it."""
from __future__ import annotations

import functools
import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmnb.errors import LmnbError
from lmnb.runtime.kernels import add_rms_norm, rms_norm, rotary


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype, device) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): the residual add fused into the norm."""
        return add_rms_norm(x, residual, self.weight, self.eps)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if not scaling:
        return inv
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / scaling["factor"]
    if kind == "llama3":
        return _llama3_inv_freq(inv, scaling)
    raise LmnbError(f"rope scaling {kind!r} is not supported; supported: linear, llama3")


def _llama3_inv_freq(inv: torch.Tensor, s: dict) -> torch.Tensor:
    factor, lo, hi = s["factor"], s.get("low_freq_factor", 1.0), s.get("high_freq_factor", 4.0)
    old_ctx = s.get("original_max_position_embeddings", 8192)
    lo_wavelen, hi_wavelen = old_ctx / lo, old_ctx / hi
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > lo_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= hi_wavelen) & (wavelen <= lo_wavelen)
    return torch.where(medium, smoothed, out)


class Rotary(nn.Module):
    """cos/sin tables for all positions, computed once in fp32 (HF's rotate_half form)."""

    def __init__(self, head_dim: int, max_pos: int, theta: float, scaling: dict | None,
                 dtype: torch.dtype, device) -> None:
        super().__init__()
        inv = rope_inv_freq(head_dim, theta, scaling)
        freqs = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos().to(dtype).to(device), persistent=False)
        self.register_buffer("sin", emb.sin().to(dtype).to(device), persistent=False)

        self._step: tuple | None = None   # CPU: this step's (positions, cos rows, sin rows)

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
        return rotary(q, k, positions, self.cos, self.sin)

    def prepare_cpu(self, positions: torch.Tensor) -> None:
        """Gather this step's cos/sin rows once for every layer (CPU eager path)."""
        self._step = (positions, self.cos[positions][:, None, :], self.sin[positions][:, None, :])

    def rotate_cpu(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """HF rotate_half rotary of x [T, heads, D] (q and k heads side by side: the same
        elementwise math as rotary_ref, in one pass) with the rows prepare_cpu gathered."""
        if self._step is None or self._step[0] is not positions:
            self.prepare_cpu(positions)
        _, c, s = self._step
        half = x.shape[-1] // 2
        return x * c + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * s


class Linear(nn.Linear):
    """nn.Linear whose one-row calls on CUDA (batch-1 decode) take
    `kernels.fp8_gemm.dense_small_m`: lmnb's GEMV on the bf16/fp16 weight where the timed
    choice finds it faster than cuBLAS (programmatic dependent launch, no workspace)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)

    def norm_forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                     norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(self(norm(x + residual)), x + residual) in one GEMV at one CUDA row, or None
        (see `fused_norm_projection`)."""
        got = fused_norm_projection(x, residual, norm, self.weight)
        if got is None or self.bias is None:
            return got
        return got[0] + self.bias, got[1]

    def silu_mul_forward(self, h: torch.Tensor) -> torch.Tensor:
        """self(silu_and_mul(h)) for h [..., 2 * in_features] (gate, up), fused at one row."""
        if _gemv_row(h, self.weight):
            from lmnb.runtime.kernels.fp8_gemm import dense_small_m

            y = dense_small_m(h.reshape(1, -1), self.weight, act=1)
            y = y.view(*h.shape[:-1], y.shape[-1])
            return y if self.bias is None else y + self.bias
        from lmnb.runtime.kernels import silu_and_mul

        return F.linear(silu_and_mul(h), self.weight, self.bias)


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with one-row CUDA calls through `fp8_gemm.dense_small_m` (see Linear)."""
    if _gemv_row(x, w):
        from lmnb.runtime.kernels.fp8_gemm import dense_small_m

        y = dense_small_m(x.reshape(1, -1), w)
        y = y.view(*x.shape[:-1], y.shape[-1])
        return y if bias is None else y + bias
    return F.linear(x, w, bias)


def norm_linear(norm: RMSNorm, proj: nn.Module, x: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(proj(norm(x + residual)), x + residual); residual None: (proj(norm(x)), x). A
    projection with `norm_forward` (Linear, Fp8Linear) runs both in its GEMV at one CUDA
    row; otherwise the fused add + norm kernel, then the projection."""
    fused = getattr(proj, "norm_forward", None)
    got = fused(x, residual, norm) if fused is not None else None
    if got is not None:
        return got
    if residual is None:
        return proj(norm(x)), x
    h, residual = norm.add(x, residual)
    return proj(h), residual


def fused_norm_projection(x: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm,
                          w: torch.Tensor, scale: torch.Tensor | None = None,
                          block=None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One row x on CUDA: (norm(x + residual) @ W.T, x + residual) in one GEMV kernel
    (`fp8_gemm.norm_gemv`: the row's 1/rms is applied to the GEMV's sums) for a
    bf16/fp16 weight (scale None) or an FP8 one with its scales. None where that does not
    apply: another device or dtype, several rows, a shape whose timed choice is not the
    GEMV, or without LMNB_NORM_GEMV=1."""
    one_row = x.is_cuda and x.numel() == x.shape[-1] and x.stride(-1) == 1
    if not (one_row and x.dtype in (torch.bfloat16, torch.float16) and norm.weight.dtype == x.dtype
            and (scale is not None or w.dtype == x.dtype) and _have_triton()):
        return None
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or not residual.is_contiguous()):
        return None
    from lmnb.runtime.kernels.fp8_gemm import GemvNorm, norm_gemv, norm_gemv_enabled

    if not norm_gemv_enabled():
        return None
    got = norm_gemv(x.reshape(1, -1), w, scale, block,
                    GemvNorm(norm.weight, norm.eps, None if residual is None else residual.reshape(1, -1)))
    if got is None:
        return None
    return got[0].view(*x.shape[:-1], w.shape[0]), got[1].view(x.shape)


def _gemv_row(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (x.is_cuda and x.dtype == w.dtype and x.dtype in (torch.bfloat16, torch.float16)
            and x.numel() == x.shape[-1] and x.stride(-1) == 1 and _have_triton())


@functools.cache
def _have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def empty_linear(n_in: int, n_out: int, bias: bool, dtype, device, quant=None) -> nn.Module:
    """A Linear whose storage is left uninitialised (weights are loaded right after).
    `quant`: a quantization method (e.g. `lmnb.runtime.quant.fp8.Fp8Method`) whose
    `make_linear` builds the layer instead; such layers load their rows themselves."""
    if quant is not None:
        return quant.make_linear(n_in, n_out, bias, dtype, device)
    lin = Linear(n_in, n_out, bias=bias, device="meta")
    lin.weight = nn.Parameter(torch.empty(n_out, n_in, dtype=dtype, device=device))
    if bias:
        lin.bias = nn.Parameter(torch.empty(n_out, dtype=dtype, device=device))
    return lin
