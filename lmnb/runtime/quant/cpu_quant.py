"""CPU quantization modes: which layers get which kernel.

    q8  every linear layer and the LM head in int8 (per output channel)
    q4  the decoder's linear layers in int4 (32-wide groups: GGUF Q4_1's grid), the LM
        head in int8 (the embedded GGUF stores the tied embedding as Q8_0)

The token embedding used for the input lookup keeps the model dtype: it reads one row
per token, so its size costs memory, not time. A layer whose shape the int4 kernel cannot
pack falls back to int8. Each decoder layer also keeps a dense fp16 copy for prefill
chunks (see cpu_linear.DENSE_ROWS); the LM head does not (it sees one row per request).
"""
from __future__ import annotations

import torch
from torch import nn

from lmnb.runtime.quant import cpu_kernels
from lmnb.runtime.quant.cpu_linear import QuantLinear, int4_fits

CPU_MODES = {
    "q8": {"layers": 8, "head": 8},
    "q4": {"layers": 4, "head": 8},
}


@torch.no_grad()
def quantize(model: nn.Module, mode: str, head_bits: int | None = None) -> dict:
    """Replace every nn.Linear under `model` (and the LM head) by a QuantLinear."""
    spec = CPU_MODES[mode]
    kernels = cpu_kernels.load()
    n_bytes, dense_bytes, counts = 0, 0, {4: 0, 8: 0}
    untied_head = getattr(model, "lm_head", None)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child is untied_head:
                continue
            bits = spec["layers"]
            if bits == 4 and not int4_fits(child.out_features, child.in_features):
                bits = 8
            q = QuantLinear(child.weight, child.bias, bits, kernels=kernels)
            setattr(parent, name, q)
            counts[bits] += 1
            n_bytes += q.nbytes()
            dense_bytes += q.dense_nbytes()
    head_bits = head_bits or spec["head"]
    if head_bits == 4 and not int4_fits(*model.head_weight().shape):
        head_bits = 8
    head = QuantLinear(model.head_weight(), None, head_bits, dense=False, kernels=kernels)
    model.set_quantized_head(head)
    n_bytes += head.nbytes()
    fused = _fuse(model, kernels)
    layers = "+".join(f"{counts[b]}x int{b}" for b in (4, 8) if counts[b])
    return {"mode": mode, "layers": layers, "head": f"int{head_bits}",
            "weight_mb": round(n_bytes / 2**20, 1), "prefill_copy_mb": round(dense_bytes / 2**20, 1),
            "kernels": cpu_kernels.status(), "fused_decode": fused,
            "summary": (f"{mode} (linear layers {layers}, LM head int{head_bits}, {cpu_kernels.status()}"
                        f"{', fused decode step' if fused is True else ''}; "
                        f"dense copy for prefill: {round(dense_bytes / 2**20)} MiB)")}


def _fuse(model: nn.Module, kernels: cpu_kernels.Kernels | None) -> bool | str:
    """Give the model the fused few-row step where it can run it: True, or why not."""
    from lmnb.runtime.quant.cpu_decode import FusedDecode

    if kernels is None:
        return "no lmnb kernels"
    if not hasattr(model, "set_fused_decode"):
        return f"{type(model).__name__} has no fused step"
    why = FusedDecode.unsupported(model)
    if why is None:
        model.set_fused_decode(FusedDecode(model, kernels))
    return why or True
