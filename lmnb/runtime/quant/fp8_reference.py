"""FP8 (e4m3) numerics in plain torch: the ground truth of the GPU kernels, the CPU path of
`Fp8Linear`, and what quantizes a bf16 model at load.

Two weight layouts, both "scale multiplies the stored value" (w ~= q * s):
  per channel  q [N, K] float8_e4m3fn, s [N] fp32 (one scale per output row)
  block        q [N, K] float8_e4m3fn, s [ceil(N/bn), ceil(K/bk)] fp32 (DeepSeek/Qwen
               FP8 releases: bn = bk = 128, stored as `weight_scale_inv`)
Activations of the large-batch path are quantized per token (one scale per row).
"""
from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)   # 448
_TINY = 1e-12                           # all-zero rows get this amax (scale stays > 0)


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (q [N, K] fp8, s [N] fp32) with max |q| = 448 per row."""
    wf = w.float()
    s = wf.abs().amax(dim=1).clamp_min(_TINY) / FP8_MAX
    return (wf / s[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), s


def quantize_block(w: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (q [N, K] fp8, s [ceil(N/bn), ceil(K/bk)] fp32), one scale per tile."""
    n, k = w.shape
    bn, bk = block
    nb, kb = -(-n // bn), -(-k // bk)
    padded = torch.zeros(nb * bn, kb * bk, dtype=torch.float32, device=w.device)
    padded[:n, :k] = w.float()
    tiles = padded.view(nb, bn, kb, bk)
    s = tiles.abs().amax(dim=(1, 3)).clamp_min(_TINY) / FP8_MAX
    q = (tiles / s[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.view(nb * bn, kb * bk)[:n, :k].contiguous(), s


def expand_block_scale(s: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """Block scales [nb, kb] -> one scale per element [N, K]."""
    n, k = shape
    return s.repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)[:, :k]


def dequantize(q: torch.Tensor, s: torch.Tensor, block: tuple[int, int] | None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight the stored (q, s) stands for."""
    if block is None:
        return (q.float() * s.float()[:, None]).to(dtype)
    return (q.float() * expand_block_scale(s.float(), tuple(q.shape), block)).to(dtype)


def quantize_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token activation quantization: [M, K] -> (q [M, K] fp8, s [M, 1] fp32)."""
    xf = x.float()
    s = xf.abs().amax(dim=1, keepdim=True).clamp_min(_TINY) / FP8_MAX
    return (xf / s).clamp(-FP8_MAX, FP8_MAX).to(FP8), s


def fp8_linear_ref(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, bias: torch.Tensor | None,
                   block: tuple[int, int] | None, quantize_input: bool = False) -> torch.Tensor:
    """y = x @ dequantize(q, s).T (+ bias) in fp32, rounded to x's dtype. `quantize_input`
    also rounds x per token to fp8 first (what the `_scaled_mm` path computes)."""
    x2 = x.reshape(-1, x.shape[-1])
    if quantize_input:
        xq, xs = quantize_rows_ref(x2)
        xf = xq.float() * xs
    else:
        xf = x2.float()
    y = xf @ dequantize(q, s, block).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype).view(*x.shape[:-1], q.shape[0])
