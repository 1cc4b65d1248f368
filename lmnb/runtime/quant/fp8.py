"""`Runtime(..., quantization="fp8")`: FP8 (e4m3) weights for the attention and MLP
projections on CUDA GPUs with FP8 support (compute capability 8.9+: Ada, Hopper).

What is quantized: q/k/v (fused), o, gate/up (fused) and down projections, and the LM
head of a model quantized at load (a per-channel FP8 copy of the bf16 head or tied
embedding: the bf16 head is 1 GB of the 8B model's 9 GB step; `LMNB_FP8_HEAD=0` keeps it
bf16; an FP8 checkpoint's head stays as shipped).
Embeddings and norms stay bf16. Activations stay bf16 except on the batch paths above 16
rows, where they are quantized per token for the FP8 tensor cores; the down projection's
GEMV (up to 4 rows) reads silu(gate) * up itself, without the activation kernel.

Weights come either from a bf16 model quantized at load (per output channel, one fp32
scale per row, computed on the device tensor by tensor as the loader streams them, so
the bf16 weights never exist twice) or from an FP8 checkpoint (`fp8_checkpoint`):
128x128 block scales are kept as blocks when every fused part of q/k/v and gate/up
starts on a block boundary, else requantized per channel. Without FP8 support an FP8
checkpoint is dequantized to the runtime dtype at load (the CPU path).
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lmnb.errors import LmnbError
from lmnb.runtime.models.config import ModelConfig
from lmnb.runtime.models.layers import RMSNorm, fused_norm_projection
from lmnb.runtime.quant.fp8_checkpoint import (
    Fp8CheckpointFormat,
    Fp8Weight,
    checkpoint_format,
    pair_fp8_weights,
)
from lmnb.runtime.quant.fp8_reference import (
    FP8,
    dequantize,
    fp8_linear_ref,
    quantize_block,
    quantize_per_channel,
)

QUANTIZATIONS = ("fp8",)


@dataclass(frozen=True, slots=True)
class Fp8Method:
    """The `quant` object the models take: builds FP8 projection layers. block: (bn, bk)
    block scales, None: per-channel. `checkpoint`: the layout the weights arrive in
    (None: bf16 weights, quantized at load)."""

    block: tuple[int, int] | None = None
    checkpoint: Fp8CheckpointFormat | None = None
    head: bool = True

    def make_linear(self, n_in: int, n_out: int, bias: bool, dtype: torch.dtype, device) -> Fp8Linear:
        return Fp8Linear(n_in, n_out, bias, dtype, device, self.block)

    def describe(self) -> str:
        scales = "per-channel scales" if self.block is None else f"{self.block[0]}x{self.block[1]} block scales"
        src = "quantized at load" if self.checkpoint is None else "from the FP8 checkpoint"
        head = "lm_head fp8 per-channel; embeddings, norms bf16" if self.head else "embeddings, norms, lm_head bf16"
        return f"fp8 (e4m3 projections, {scales}, {src}; {head})"


class Fp8Linear(nn.Module):
    """y = x @ (q * scale).T + bias with q [out, in] float8_e4m3fn. Loads row ranges (the
    parts of a fused projection) from bf16 tensors (quantized here) or `Fp8Weight`s."""

    def __init__(self, n_in: int, n_out: int, bias: bool, dtype: torch.dtype, device,
                 block: tuple[int, int] | None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.block = n_in, n_out, block
        self.weight = nn.Parameter(torch.empty(n_out, n_in, dtype=FP8, device=device), requires_grad=False)
        shape = (n_out,) if block is None else (-(-n_out // block[0]), -(-n_in // block[1]))
        self.weight_scale = nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=device),
                                         requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(n_out, dtype=dtype, device=device), requires_grad=False)
                     if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.weight_scale, self.bias, self.block)

    def norm_forward(self, x: torch.Tensor, residual: torch.Tensor | None,
                     norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(self(norm(x + residual)), x + residual) in one GEMV at one CUDA row, or None
        (see `models.layers.fused_norm_projection`)."""
        got = fused_norm_projection(x, residual, norm, self.weight, self.weight_scale, self.block)
        if got is None or self.bias is None:
            return got
        return got[0] + self.bias, got[1]

    def silu_mul_forward(self, h: torch.Tensor) -> torch.Tensor:
        """self(silu_and_mul(h)) for h [..., 2 * in_features] (gate, up): the decode GEMV
        computes the activation as it reads h (no separate kernel)."""
        return fp8_linear(h, self.weight, self.weight_scale, self.bias, self.block, act=1)

    def extra_repr(self) -> str:
        scales = "per_channel" if self.block is None else f"block={self.block}"
        return f"in={self.in_features}, out={self.out_features}, fp8_e4m3, {scales}, bias={self.bias is not None}"

    @torch.no_grad()
    def load_weight(self, leaf: str, t, row_offset: int) -> None:
        """Place rows [row_offset, row_offset + rows) of `leaf` ('weight' or 'bias')."""
        if leaf == "bias":
            if self.bias is None:
                raise LmnbError("the checkpoint has a bias for a projection the model builds without one")
            self.bias.narrow(0, row_offset, t.shape[0]).copy_(t)
            return
        if leaf != "weight":
            raise LmnbError(f"unexpected tensor {leaf!r} for an FP8 projection")
        rows, cols = t.shape
        if cols != self.in_features or row_offset + rows > self.out_features:
            raise LmnbError(f"weight of shape {tuple(t.shape)} at row {row_offset} does not fit an "
                            f"FP8 projection of {self.out_features}x{self.in_features}")
        q, s = self._to_layout(t)
        self.weight.narrow(0, row_offset, rows).copy_(q)
        if self.block is None:
            self.weight_scale.narrow(0, row_offset, rows).copy_(s)
        else:
            if row_offset % self.block[0]:
                raise LmnbError(f"a fused part starts at row {row_offset}, inside a {self.block[0]}-row scale block")
            self.weight_scale.narrow(0, row_offset // self.block[0], s.shape[0]).copy_(s)

    def _to_layout(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.weight.device
        if isinstance(t, Fp8Weight):
            if t.block == self.block:
                return t.q.to(dev), t.scale.to(dev)
            t = dequantize(t.q.to(dev), t.scale.to(dev), t.block)  # layouts differ: requantize
        t = t.to(dev)
        return quantize_per_channel(t) if self.block is None else quantize_block(t, self.block)


def fp8_linear(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, bias: torch.Tensor | None,
               block: tuple[int, int] | None, act: int = 0) -> torch.Tensor:
    """The projection: Triton / _scaled_mm on CUDA, the fp32 reference elsewhere.
    act == 1: x is [..., 2K] (gate, up) and the input is silu(gate) * up."""
    if not (x.is_cuda and _have_triton()):
        if act:
            from lmnb.runtime.kernels import silu_and_mul

            x = silu_and_mul(x)
        return fp8_linear_ref(x, q, s, bias, block)
    from lmnb.runtime.kernels.fp8_gemm import fp8_matmul

    y = fp8_matmul(x.reshape(-1, x.shape[-1]), q, s, block, act)
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], q.shape[0])


def quantize_head(model: nn.Module, method: Fp8Method) -> bool:
    """Give `model` an FP8 copy of its LM head (per channel, from the loaded bf16 head or
    tied embedding), which its `logits` then use; an untied bf16 head is freed. False
    (nothing done) when the method keeps the head or the model has no such hook."""
    if not method.head or not hasattr(model, "set_quantized_head") or not hasattr(model, "head_weight"):
        return False
    w = model.head_weight()
    head = Fp8Linear(w.shape[1], w.shape[0], False, w.dtype, w.device, None)
    head.load_weight("weight", w.detach(), 0)
    model.set_quantized_head(head)
    return True


def _have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


# ---------------------------------------------------------------------------- choosing
def fp8_unsupported_reason(device: torch.device) -> str | None:
    """Why FP8 kernels cannot run on `device` (None: they can)."""
    if device.type != "cuda":
        return f"this runtime is on {device.type}"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        name = torch.cuda.get_device_name(device)
        return f"{device} ({name}) has compute capability {cap[0]}.{cap[1]}"
    if not _have_triton():
        return "triton is not installed (pip install triton)"
    return None


def plan_fp8(quantization: str | None, hf_config: dict, cfg: ModelConfig, device: torch.device,
             dtype: torch.dtype) -> Fp8Method | None:
    """The FP8 method for this load, or None (plain layers; an FP8 checkpoint is then
    dequantized at load). Asking for fp8 where it cannot run is a one-line error."""
    fmt = checkpoint_format(hf_config)
    if quantization is None and fmt is None:
        return None
    if quantization not in (None, "fp8"):
        return None   # another mode's business
    reason = fp8_unsupported_reason(device)
    if quantization == "fp8":
        if reason:
            raise LmnbError(f"quantization='fp8' needs a CUDA GPU with FP8 support (compute "
                            f"capability 8.9+: Ada, Hopper, e.g. H100/H200/L40S); {reason}")
        if dtype != torch.bfloat16:
            raise LmnbError(f"quantization='fp8' computes in bfloat16; drop dtype= or pass "
                            f"dtype='bfloat16' (got {str(dtype).removeprefix('torch.')})")
    elif reason or dtype != torch.bfloat16:
        return None   # an FP8 checkpoint where FP8 cannot run (or another dtype asked): dequantize
    block = fmt.block if fmt is not None and fmt.block and blocks_align(cfg, fmt.block) else None
    # an FP8 checkpoint's head stays as its authors shipped it (bf16); a model quantized at
    # load gets an FP8 head unless LMNB_FP8_HEAD=0
    head = fmt is None and os.environ.get("LMNB_FP8_HEAD", "1").strip().lower() not in ("0", "false", "no", "off")
    if device.type == "cuda":
        from lmnb.runtime.kernels.fp8_gemm import scaled_mm_usable

        scaled_mm_usable(device, 16, 16)   # probe once, outside any graph capture
    return Fp8Method(block=block, checkpoint=fmt, head=head)


def blocks_align(cfg: ModelConfig, block: tuple[int, int]) -> bool:
    """Every fused part (q, k, v; gate, up) starts on a row-block boundary."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return all(r % block[0] == 0 for r in (q, kv, cfg.intermediate_size))


def describe(method: Fp8Method | None, hf_config: dict, dtype: torch.dtype) -> str | None:
    """The quantization line of status / repr (None: an unquantized model)."""
    if method is not None:
        return method.describe()
    if checkpoint_format(hf_config) is not None:
        return f"fp8 checkpoint dequantized to {str(dtype).removeprefix('torch.')} at load"
    return None


def model_weights(weights: Iterable[tuple[str, torch.Tensor]], hf_config: dict) -> Iterator[tuple[str, object]]:
    """The loader's stream with FP8 weights paired with their scales (`Fp8Weight`)."""
    return pair_fp8_weights(weights, checkpoint_format(hf_config))
