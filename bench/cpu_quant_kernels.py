"""CPU weight-only matmul kernels on smollm2's shapes, batch 1 (decode GEMVs) and a
prefill chunk: which kernel keeps the weights small *and* fast.

    fp32         F.linear, fp32 weights (today's path)
    bf16         F.linear, bf16 weights and activations
    fp16w        fbgemm fp16 weights, fp32 activations (quantized.linear_dynamic_fp16)
    int8         aten._weight_int8pack_mm, bf16 activations (fp32 activations: int8_f32)
    int4         aten._weight_int4pack_mm_for_cpu, groups of 32, bf16 activations (int4_f32)
    lmnb_int8    lmnb's own kernel (cpu_kernels.c): int8 weights, activations int8 per 32
    lmnb_int4    lmnb's own kernel: 4-bit codes with fp16 scale + min per 32 (Q4_1's form)
Prints one line per (shape, rows, threads) with the best-of-5 microseconds per call and
the weight bytes each layout reads. Usage: python bench/cpu_quant_kernels.py [--threads 1,2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import emit, save  # noqa: E402

from lmnb.runtime.quant import cpu_kernels  # noqa: E402
from lmnb.runtime.quant.cpu_linear import QuantLinear  # noqa: E402

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536),
          "lm_head": (49152, 576)}
LAYERS = 30


def best_us(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best * 1e6


def kernels(w: torch.Tensor) -> dict:
    wb = w.bfloat16()
    p16 = torch.ops.quantized.linear_prepack_fp16(w, None)
    q8, q4 = QuantLinear(w, None, 8), QuantLinear(w, None, 4)
    return {
        "fp32": (lambda x: F.linear(x, w), w.numel() * 4),
        "bf16": (lambda x: F.linear(x.bfloat16(), wb), w.numel() * 2),
        "fp16w": (lambda x: torch.ops.quantized.linear_dynamic_fp16(x, p16), w.numel() * 2),
        "int8": (lambda x: q8(x.bfloat16()), q8.nbytes()),
        "int8_f32": (lambda x: torch.ops.aten._weight_int8pack_mm(x, q8.qweight, q8.scales.float()),
                     q8.nbytes()),
        "int4": (lambda x: q4(x.bfloat16()), q4.nbytes()),
        "int4_f32": (lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, q4.qweight, 32, q4.scales.float()),
                     q4.nbytes()),
        **own(w),
    }


def own(w: torch.Tensor) -> dict:
    """lmnb's kernels, called directly (any row count), where they build."""
    k = cpu_kernels.load()
    if k is None:
        return {}
    l8 = QuantLinear(w, None, 8, dense=False, kernels=k)
    l4 = QuantLinear(w, None, 4, dense=False, kernels=k)
    return {"lmnb_int8": (lambda x: k.linear(l8.desc, x), l8.nbytes()),
            "lmnb_int4": (lambda x: k.linear(l4.desc, x), l4.nbytes())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rows", default="1,15,128")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows_out = []
    load = os.getloadavg()[0]
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for rows in (int(r) for r in args.rows.split(",")):
            per_step: dict[str, float] = {}
            for name, (n, k) in SHAPES.items():
                w = torch.randn(n, k) * 0.02
                x = torch.randn(rows, k)
                calls = max(2, int(20000 / (n * k / 1e4) / rows ** 0.5 / 10))
                res = {}
                for kname, (fn, nbytes) in kernels(w).items():
                    if kname.endswith("_f32") and (rows > 1 or n > 10000):
                        continue  # several times slower than the bf16 path: seen at a glance
                    us = best_us(lambda: fn(x), calls)
                    res[kname] = us
                    mult = 1 if name == "lm_head" else LAYERS
                    per_step[kname] = per_step.get(kname, 0.0) + us * mult
                    rows_out.append(emit("cpu_quant_kernel", shape=name, n=n, k=k, rows=rows,
                                         threads=threads, kernel=kname, us=us,
                                         gb_s=nbytes / us / 1e3, load1=load))
            for kname, us in per_step.items():
                if kname.endswith("_f32"):
                    continue
                rows_out.append(emit("cpu_quant_step", rows=rows, threads=threads, kernel=kname,
                                     matmul_ms_per_step=us / 1e3, load1=load))
    out = save("cpu_quant_kernels.json", rows_out, note="best of 5; machine shared, see load1")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
