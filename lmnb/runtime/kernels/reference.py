"""Plain-torch references for the fused kernels: the CPU path and the ground truth of the
GPU tests. Numerics follow HF transformers (Llama family)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm: normalise in fp32, round to x's dtype, then scale by weight."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual): the pre-norm decoder's residual step."""
    s = x + residual
    return rms_norm_ref(s, weight, eps), s


def full_rope_table(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """HF keeps cos/sin as [max_pos, head_dim] with both halves equal; a half-width
    [max_pos, head_dim // 2] table is widened to that."""
    return t if t.shape[-1] == head_dim else torch.cat([t, t], dim=-1)


def rotary_ref(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF rotate_half rotary embedding. q [T, H, D], k [T, KVH, D], positions [T];
    cos/sin [max_pos, D] (HF layout) or [max_pos, D // 2]."""
    d = q.shape[-1]
    c = full_rope_table(cos, d)[positions][:, None, :]
    s = full_rope_table(sin, d)[positions][:, None, :]
    return q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2 * I] holding gate then up -> silu(gate) * up, [..., I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up
