"""FP8 checkpoints: what `quantization_config` says, and the weight stream with each FP8
weight paired with its scale.

Layouts read (config.json `quantization_config`):
  quant_method "fp8", weight_block_size [128, 128]   DeepSeek-V3 / Qwen3-FP8 releases:
      `<proj>.weight` float8_e4m3fn + `<proj>.weight_scale_inv` [ceil(N/128), ceil(K/128)]
  quant_method "fp8" without weight_block_size        `weight_scale` per tensor
  quant_method "compressed-tensors", float 8-bit weights, strategy channel / tensor / block
      `<proj>.weight` float8_e4m3fn + `<proj>.weight_scale` [N, 1] / [1] / blocks
Both scale names multiply the stored value (w = q * scale). Static `input_scale`s are
dropped: activations are quantized per token at run time instead, which is at least as
precise.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from lmnb.errors import LmnbError
from lmnb.runtime.quant.fp8_reference import FP8, dequantize

SCALE_SUFFIXES = (".weight_scale_inv", ".weight_scale")
DROPPED_SUFFIXES = (".input_scale", ".output_scale", ".k_scale", ".v_scale")


@dataclass(frozen=True, slots=True)
class Fp8CheckpointFormat:
    """block: (bn, bk) for block scales, None for per-channel or per-tensor ones."""

    method: str
    block: tuple[int, int] | None


@dataclass(slots=True)
class Fp8Weight:
    """One FP8 weight as stored: q [N, K] float8_e4m3fn and its fp32 scale, [N] (per
    channel; a per-tensor scale is widened to this) or [ceil(N/bn), ceil(K/bk)] (block)."""

    q: torch.Tensor
    scale: torch.Tensor
    block: tuple[int, int] | None

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.block, dtype)


# methods whose checkpoints hold packed integer weights lmnb cannot read
PACKED_METHODS = ("awq", "gptq", "bitsandbytes", "aqlm", "eetq", "hqq", "quanto", "exl2",
                  "marlin", "higgs", "vptq", "spqr", "bitnet", "torchao", "fbgemm_fp8", "mxfp4")


def checkpoint_format(hf_config: dict) -> Fp8CheckpointFormat | None:
    """The FP8 layout a transformers config declares; None for a model with plain weights
    (including GGUF conversions, whose config keeps quant_method 'gguf' after the weights
    were dequantized). Packed-weight methods are a clear error (lmnb would read garbage)."""
    qc = hf_config.get("quantization_config") or hf_config.get("compression_config")
    if not qc:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method == "fp8":
        fmt = str(qc.get("fmt", "e4m3")).lower()
        if fmt != "e4m3":
            raise LmnbError(f"FP8 checkpoint format {fmt!r} is not supported; lmnb reads e4m3 weights")
        block = qc.get("weight_block_size")
        return Fp8CheckpointFormat("fp8", _block(block) if block else None)
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    if method in PACKED_METHODS:
        raise LmnbError(f"quantization_config quant_method {method!r} is not supported; lmnb reads "
                        "FP8 checkpoints (quant_method 'fp8' or float8 'compressed-tensors')")
    return None


def _block(b) -> tuple[int, int]:
    if not (isinstance(b, (list, tuple)) and len(b) == 2 and all(isinstance(v, int) and v > 0 for v in b)):
        raise LmnbError(f"weight_block_size must be two positive ints, got {b!r}")
    return int(b[0]), int(b[1])


def _compressed_tensors(qc: dict) -> Fp8CheckpointFormat:
    groups = qc.get("config_groups") or {}
    block = None
    for name, g in groups.items():
        w = (g or {}).get("weights") or {}
        if w.get("type") != "float" or w.get("num_bits") != 8:
            raise LmnbError(f"compressed-tensors group {name!r} stores {w.get('num_bits')}-bit "
                            f"{w.get('type')} weights; lmnb reads only 8-bit float (FP8) ones")
        strategy = w.get("strategy", "tensor")
        if strategy == "block":
            block = _block(w.get("block_structure"))
        elif strategy not in ("channel", "tensor"):
            raise LmnbError(f"compressed-tensors weight strategy {strategy!r} is not supported; "
                            "lmnb reads channel, tensor and block FP8 scales")
    return Fp8CheckpointFormat("compressed-tensors", block)


def pair_fp8_weights(weights: Iterable[tuple[str, torch.Tensor]],
                     fmt: Fp8CheckpointFormat | None) -> Iterator[tuple[str, object]]:
    """Yield (name, tensor) for plain tensors and (weight name, Fp8Weight) for each FP8
    weight once its scale has been seen (in either order, across shards)."""
    waiting_q: dict[str, torch.Tensor] = {}
    waiting_s: dict[str, torch.Tensor] = {}
    block = fmt.block if fmt is not None else None
    for name, t in weights:
        if name.endswith(DROPPED_SUFFIXES):
            continue
        suffix = next((s for s in SCALE_SUFFIXES if name.endswith(s)), None)
        if suffix is not None:
            prefix = name[: -len(suffix)]
            if prefix in waiting_q:
                yield prefix + ".weight", _make(prefix, waiting_q.pop(prefix), t, block)
            else:
                waiting_s[prefix] = t
            continue
        if name.endswith(".weight") and t.dtype in (FP8, torch.float8_e5m2):
            if t.dtype != FP8:
                raise LmnbError(f"{name} is float8_e5m2; lmnb reads float8_e4m3fn weights")
            prefix = name[: -len(".weight")]
            if prefix in waiting_s:
                yield name, _make(prefix, t, waiting_s.pop(prefix), block)
            else:
                waiting_q[prefix] = t
            continue
        yield name, t
    if waiting_q:
        raise LmnbError(f"FP8 weight {min(waiting_q)}.weight has no weight_scale(_inv) in the checkpoint")
    # scales of weights that are not FP8 (an unquantized layer listed with a scale) are unused


def _make(prefix: str, q: torch.Tensor, s: torch.Tensor, block: tuple[int, int] | None) -> Fp8Weight:
    if q.dim() != 2:
        raise LmnbError(f"FP8 weight {prefix}.weight has {q.dim()} dims; expected a [out, in] matrix")
    n, k = q.shape
    s = s.float()
    if s.numel() == 1:                     # per tensor: the same scale on every row
        return Fp8Weight(q, s.reshape(1).expand(n).contiguous(), None)
    if s.numel() == n and (s.dim() == 1 or s.shape == (n, 1)) and block is None:
        return Fp8Weight(q, s.reshape(n).contiguous(), None)
    b = block or (128, 128)
    want = (-(-n // b[0]), -(-k // b[1]))
    if s.dim() == 2 and tuple(s.shape) == want:
        return Fp8Weight(q, s.contiguous(), b)
    raise LmnbError(f"{prefix}: scale of shape {tuple(s.shape)} fits neither per-channel ({n}) "
                    f"nor {b[0]}x{b[1]} block scales {want} of a {n}x{k} FP8 weight")
