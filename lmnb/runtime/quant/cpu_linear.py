"""Weight-only quantized linear layers for the CPU.

The weights stay packed in memory and each matmul reads them packed: a decode step on the
CPU is a chain of GEMVs bound by memory bandwidth, so fewer weight bytes is the speed-up.
Two kernel sets, chosen once per runtime (`cpu_kernels.load()`):

- lmnb's own (`cpu_kernels.c`, built on first use): fp32 activations quantized per group
  of 32 to int8 inside the call, exact integer dot products against the 4-bit or 8-bit
  codes, fp32 scales. A tile of rows shares each weight load.
- torch's CPU weight-only ops (the ones torchao builds on), where no C compiler works:

    int8  per-output-channel symmetric      aten._weight_int8pack_mm
    int4  groups of 32 along the input dim,  aten._weight_int4pack_mm_for_cpu
          scale + zero point per group       (weights packed by _convert_weight_to_int4pack_for_cpu)

  These run their inner loop in bfloat16 activations (their fp32-activation paths are
  several times slower, see bench/cpu_quant_kernels.py): the layer casts its input to bf16
  and its output back to the model dtype.

Both are GEMV kernels: fast for a few rows, several times slower than a dense GEMM for a
prefill chunk. So a layer also keeps a dense copy of its *quantized* weights for steps of `DENSE_ROWS`
rows or more: fp16 packed for fbgemm (`quantized.linear_dynamic_fp16`, fp32 activations), or
the fp32 weight where fbgemm is missing. Decode steps never read it.

Int4 with 32-wide groups and a per-group min is exactly
the grid of GGUF Q4_1, so the embedded model's Q4_1 layers come back as the same 4-bit codes
(lmnb's kernels keep each group's scale and min in fp16, as Q4_1 stores them, so the
embedded model's weights come back exactly; torch's kernel takes a bf16 scale and zero).
"""
from __future__ import annotations

import torch
from torch import nn

from lmnb.runtime.quant import cpu_kernels

INT4_GROUP = cpu_kernels.GROUP   # 32: Q4_1's block, torch's int4 kernel's group size too
DENSE_ROWS = 32   # steps with at least this many rows use the dense copy; below it every
                  # row is computed exactly as it would be alone (the GEMV kernels are
                  # row-invariant), which drafted and batched greedy decoding rely on.
                  # 32, not 16: a verify step may then check 31 draft tokens (bench/RESULTS.md,
                  # 2026-12-03: an edited cell 1.14-1.28x -> 1.36-1.47x, plain decoding unchanged)
_ACT = torch.bfloat16


def _has_fbgemm() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


class DenseCopy:
    """The weight for many-row steps: fbgemm fp16-packed, else fp32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.bias = None if bias is None else bias.detach().float().clone()
        self.packed = self.weight = None
        if _has_fbgemm():
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float().contiguous(), self.bias)
        else:
            self.weight = weight.detach().float().clone()
        self.nbytes = weight.numel() * (2 if self.packed is not None else 4)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        if self.packed is not None:
            return torch.ops.quantized.linear_dynamic_fp16(xf, self.packed)
        return torch.nn.functional.linear(xf, self.weight, self.bias)


def int4_fits(n_out: int, n_in: int, group: int = INT4_GROUP) -> bool:
    """The int4 CPU kernel packs rows in 16s and needs whole groups along the input."""
    return n_out % 16 == 0 and n_in % group == 0


def quantize_int8(w: torch.Tensor, dtype: torch.dtype = _ACT) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (int8 codes [N, K], scales [N] in `dtype`); w ~= codes * scale[:, None].
    The codes are rounded with the scale the kernel will use."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).to(dtype)
    q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantize_int4(w: torch.Tensor, group: int = INT4_GROUP,
                  dtype: torch.dtype = _ACT) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (codes 0..15 int32 [N, K], scales_and_zeros [K/group, N, 2] in
    `dtype`); w ~= (code - 8) * scale + zero per group (asymmetric: zero = min + 8 * scale)."""
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15.0).to(dtype)
    scale = torch.where(scale.float() > 0, scale, torch.ones_like(scale))
    zero = (lo + 8.0 * scale.float()).to(dtype)
    s, z = scale.float()[..., None], zero.float()[..., None]
    q = torch.round((g - z) / s + 8.0).clamp_(0, 15).to(torch.int32).reshape(n, k)
    sz = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # [K/g, N, 2]
    return q, sz


def quantize_int4_min(w: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N, K] float -> (codes 0..15 int32 [N, K], scale fp16 [N, K/group], min fp16
    [N, K/group]); w ~= code * scale + min per group. That is GGUF Q4_1's form and storage:
    a Q4_1 matrix comes back with its own codes, scales and mins."""
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15.0).half()
    scale = torch.where(scale.float() > 0, scale, torch.ones_like(scale))
    mn = lo.half()
    s, m = scale.float()[..., None], mn.float()[..., None]
    q = torch.round((g - m) / s).clamp_(0, 15).to(torch.int32).reshape(n, k)
    return q, scale, mn


def dequantize_int4_min(q: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor,
                        group: int = INT4_GROUP) -> torch.Tensor:
    n, k = q.shape
    g = q.reshape(n, k // group, group).float()
    return (g * scale.float()[..., None] + mn.float()[..., None]).reshape(n, k)


def dequantize_int4(q: torch.Tensor, sz: torch.Tensor, group: int = INT4_GROUP) -> torch.Tensor:
    n, k = q.shape
    s = sz[..., 0].transpose(0, 1).float()[..., None]  # [N, K/g, 1]
    z = sz[..., 1].transpose(0, 1).float()[..., None]
    return ((q.reshape(n, k // group, group).float() - 8.0) * s + z).reshape(n, k)


class QuantLinear(nn.Module):
    """y = x @ W.T (+ bias) with W held as int8 or int4 codes. Same call signature as
    nn.Linear; the output has the input's dtype. `kernels`: lmnb's C kernels
    (`cpu_kernels.load()`), or None for torch's."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, bits: int,
                 dense: bool = True, kernels: cpu_kernels.Kernels | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bits = bits
        own = kernels is not None and cpu_kernels.fits(self.in_features)
        self.kernels = kernels if own else None
        if bits == 8:
            q, scale = quantize_int8(weight, torch.float32 if own else _ACT)
            # lmnb's kernels: the codes repacked in blocks of 16 columns (cpu_kernels.pack_q8)
            self.register_buffer("qweight", cpu_kernels.pack_q8(q) if own else q)
            self.register_buffer("scales", scale)
            approx = dequantize_int8(q, scale) if dense else None
        elif bits == 4:
            if not int4_fits(self.out_features, self.in_features):
                raise ValueError(f"int4 needs out % 16 == 0 and in % {INT4_GROUP} == 0, "
                                 f"got {tuple(weight.shape)}")
            if own:   # codes two per byte and fp16 scale and min per group, repacked in
                      # blocks of 16 columns (cpu_kernels.pack_q4, pack_cols)
                q, s, mn = quantize_int4_min(weight)
                approx = dequantize_int4_min(q, s, mn) if dense else None
                self.register_buffer("qweight", cpu_kernels.pack_q4(q))
                self.register_buffer("scales", cpu_kernels.pack_cols(s))
                self.register_buffer("mins", cpu_kernels.pack_cols(mn))
            else:
                q, sz = quantize_int4(weight)
                approx = dequantize_int4(q, sz) if dense else None
                self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
                self.register_buffer("scales", sz)
        else:
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        # the dense copy holds the quantized weights, so both paths compute with the same
        # weights (up to fp16 rounding there and the activations' rounding here)
        self.dense = DenseCopy(approx, bias) if dense else None
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.desc: cpu_kernels.Linear | None = None
        self._bind()

    def _bind(self) -> None:
        """(Re)build the C view of the buffers: after init and whenever they move."""
        if self.kernels is None:
            return
        if self.bias is not None and self.bias.dtype != torch.float32:
            self.bias = self.bias.float()
        for name in ("qweight", "scales", "mins"):
            buf = getattr(self, name, None)
            if buf is not None and not buf.is_contiguous():
                setattr(self, name, buf.contiguous())
        self.desc = cpu_kernels.linear_desc(self.bits, self.out_features, self.in_features,
                                            self.qweight, self.scales, getattr(self, "mins", None),
                                            self.bias)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._bind()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            return self.forward(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)
        if self.dense is not None and x.shape[0] >= DENSE_ROWS:
            y = self.dense(x)
            return y if y.dtype == x.dtype else y.to(x.dtype)
        if self.kernels is not None:   # bias included
            y = self.kernels.linear(self.desc, x.float().contiguous())
            return y if y.dtype == x.dtype else y.to(x.dtype)
        xa = x if x.dtype == _ACT else x.to(_ACT)
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(xa, self.qweight, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(xa, self.qweight, INT4_GROUP, self.scales)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def nbytes(self) -> int:
        """Bytes a few-row step reads (the packed codes and scales)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def dense_nbytes(self) -> int:
        return 0 if self.dense is None else self.dense.nbytes

    def extra_repr(self) -> str:
        dense = "" if self.dense is None else (", dense fp16" if self.dense.packed is not None else ", dense fp32")
        kernel = "lmnb" if self.kernels is not None else "torch"
        return f"in={self.in_features}, out={self.out_features}, int{self.bits} ({kernel}){dense}"
