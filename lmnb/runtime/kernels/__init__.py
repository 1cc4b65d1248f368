"""Fused GPU ops with plain-torch references (`reference.py`).

Modules: `reference` (torch), `norm`, `rope`, `activation` (Triton). Call the dispatchers
below: on a CUDA tensor with Triton importable they run the Triton
kernel (imported lazily, so CPU-only installs never import triton), otherwise the torch
reference.

    rms_norm(x, weight, eps)                    -> y
    add_rms_norm(x, residual, weight, eps)      -> (rms_norm(x + residual), x + residual)
    rotary(q, k, positions, cos, sin)           -> (q_rot, k_rot)   HF rotate_half form
    silu_and_mul(x)                             -> silu(x[..., :I]) * x[..., I:]
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache

import torch

from lmnb.runtime.kernels.reference import (
    add_rms_norm_ref,
    rms_norm_ref,
    rotary_ref,
    silu_and_mul_ref,
)

__all__ = [
    "add_rms_norm",
    "add_rms_norm_ref",
    "rms_norm",
    "rms_norm_ref",
    "rotary",
    "rotary_ref",
    "silu_and_mul",
    "silu_and_mul_ref",
    "triton_usable",
]


@lru_cache(maxsize=1)
def _have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_usable(x: torch.Tensor) -> bool:
    return x.is_cuda and _have_triton()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if triton_usable(x):
        from lmnb.runtime.kernels.norm import rms_norm_triton
        return rms_norm_triton(x, weight, eps)
    return rms_norm_ref(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    if triton_usable(x):
        from lmnb.runtime.kernels.norm import add_rms_norm_triton
        return add_rms_norm_triton(x, residual, weight, eps)
    return add_rms_norm_ref(x, residual, weight, eps)


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if triton_usable(q):
        from lmnb.runtime.kernels.rope import rotary_triton
        return rotary_triton(q, k, positions, cos, sin)
    return rotary_ref(q, k, positions, cos, sin)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    if triton_usable(x):
        from lmnb.runtime.kernels.activation import silu_and_mul_triton
        return silu_and_mul_triton(x)
    return silu_and_mul_ref(x)
