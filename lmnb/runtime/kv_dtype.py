"""The KV cache's storage format: the model dtype, or FP8 e4m3 codes with scales.

One source of truth for `RuntimeConfig.kv_cache_dtype`: the names it takes, the torch
dtype they store, the bytes a token costs in the pool, and the torch reference of the
quantization that every kernel writing or reading an FP8 pool must match.

Scale scheme: one fp32 scale per (token, KV head), `amax / 448` of that head's K (or V)
row, computed when the row is written; codes are `x / scale` rounded to e4m3 (its largest
finite value is 448). Why not a per-tensor scale (vLLM / SGLang: 1.0, or a checkpoint's
`k_scale` / `v_scale`)? e4m3 has 3 mantissa bits and a smallest normal of 2^-6: with a
fixed scale, rows of small magnitude (seeded random weights give |k| ~ 0.05; real models'
V rows are often ~0.01-0.1) fall into subnormals and lose most of their bits, and rows of
large magnitude (outlier K channels) saturate, unless someone calibrates. A per-row scale
puts every row's largest element at 448, so each element keeps its 3 mantissa bits
(relative error <= 2^-4 per element) whatever the magnitudes, with no calibration. Cost:
4 bytes per 128-byte head row (3%), so the pool holds 2 * D / (D + 4) = 1.94x the tokens
of bf16 for D = 128; the write kernel computes the amax of a row it already holds in
registers, and the attention kernels multiply the logits (K) and the probabilities (V) by
one scale per key, never a whole tile.
"""
from __future__ import annotations

import torch

from lmnb.errors import LmnbError

FP8_KV = torch.float8_e4m3fn
FP8_MAX = 448.0                 # largest finite e4m3 value
INV_FP8_MAX = 1.0 / 448.0       # scale = amax * fp32(1 / 448): one fp32 multiply, as the kernels
SCALE_DTYPE = torch.float32     # one per (token, KV head), beside the codes
# the names `kv_cache_dtype` takes -> the canonical one ("fp8" is vLLM / SGLang's alias)
KV_CACHE_DTYPES = {"fp8_e4m3": "fp8_e4m3", "fp8": "fp8_e4m3"}
_STORAGE = {"fp8_e4m3": FP8_KV}


def canonical(kv_cache_dtype: str | None) -> str | None:
    """None for the model dtype (None / 'auto'), else the canonical FP8 name."""
    if kv_cache_dtype in (None, "auto"):
        return None
    if isinstance(kv_cache_dtype, str) and kv_cache_dtype.lower() in KV_CACHE_DTYPES:
        return KV_CACHE_DTYPES[kv_cache_dtype.lower()]
    raise LmnbError(f"kv_cache_dtype must be None, 'auto', 'fp8_e4m3' or 'fp8', got {kv_cache_dtype!r}")


def storage_dtype(kv_cache_dtype: str | None, model_dtype: torch.dtype) -> torch.dtype:
    """The dtype of the pool's K/V tensors."""
    name = canonical(kv_cache_dtype)
    return model_dtype if name is None else _STORAGE[name]


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype == FP8_KV


def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Pool bytes of one token: K and V of every layer, plus their scales when FP8."""
    row = head_dim * torch.tensor([], dtype=dtype).element_size()
    if is_fp8(dtype):
        row += torch.tensor([], dtype=SCALE_DTYPE).element_size()
    return 2 * num_layers * kv_heads * row


def label(dtype: torch.dtype) -> str:
    """'fp8_e4m3' or 'bfloat16' (what status lines show)."""
    return "fp8_e4m3" if is_fp8(dtype) else str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------- reference
def quantize_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (e4m3 codes [..., D], fp32 scales [...]): scale = amax * fp32(1/448)
    of each row (1.0 for an all-zero row), codes = x / scale. The Triton writers compute
    exactly this (one fp32 multiply, IEEE division, round to nearest even)."""
    xf = x.float()
    amax = xf.abs().amax(-1)
    inv = torch.tensor(INV_FP8_MAX, dtype=torch.float32, device=x.device)
    scale = torch.where(amax > 0, amax * inv, torch.ones_like(amax))
    codes = (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_KV)
    return codes, scale


def dequantize_ref(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes [..., D] * scale [...] in `dtype` (fp32 product, then rounded)."""
    return (codes.float() * scale[..., None].float()).to(dtype)
