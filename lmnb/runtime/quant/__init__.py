"""Quantized weights; each mode is a module of its own:

    fp8      FP8 e4m3 projections on CUDA GPUs with FP8 support (`fp8*`): the models take
             an optional `quant` object whose `make_linear` builds the projection layers
    q8, q4   CPU weight-only int8 / int4 matmuls (`cpu_quant`, `cpu_linear`):
             `quantize_model(model, mode)` swaps a loaded model's linear layers (and its
             LM head) for quantized ones
"""
from __future__ import annotations

from torch import nn


def quantize_model(model: nn.Module, mode: str) -> dict:
    """Quantize `model` in place; returns what was done (for `Runtime.describe()`)."""
    from lmnb.runtime.quant import cpu_quant

    if mode in cpu_quant.CPU_MODES:
        return cpu_quant.quantize(model, mode)
    raise ValueError(f"unknown quantization mode {mode!r}")
