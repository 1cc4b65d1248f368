"""The one-row GEMV with the decoder's add + RMSNorm inside it, against the norm kernel
followed by the plain GEMV, per tile config, on the 8B shapes (q/k/v, gate/up, head):
FP8 per-channel and bf16 weights. Each variant is timed over distinct weight copies in one
CUDA graph (`fp8_gemm.time_cold`: weights from HBM, a decode step's launch gaps).

    python bench/debug/norm_gemv_kernels.py [--out FILE] [--late 0,1]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment  # noqa: E402

from lmnb.runtime.kernels import fp8_gemm  # noqa: E402
from lmnb.runtime.kernels.norm import add_rms_norm_triton  # noqa: E402
from lmnb.runtime.quant.fp8_reference import quantize_per_channel  # noqa: E402

SHAPES = {"qkv": (6144, 4096), "gate_up": (28672, 4096), "head": (128256, 4096)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--late", default="0,1", help="NORM_LATE_STORE values to time")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    dev = torch.device("cuda")
    eps = 1e-5
    rows = []
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        r = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
        g = torch.rand(k, device=dev, dtype=torch.bfloat16) + 0.5
        total = torch.empty_like(x)
        for kind in ("fp8", "bf16"):
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
            q, s = quantize_per_channel(w) if kind == "fp8" else (w, None)
            copies = fp8_gemm.cold_copies(q)
            y = torch.empty(1, n, device=dev, dtype=torch.bfloat16)
            for bn, bk, warps in fp8_gemm.GEMV_TILES[1]:
                cfg = (bn, min(bk, k), warps, 1)
                t = {}
                t["gemv"] = fp8_gemm.time_cold(
                    lambda ww, cfg=cfg: fp8_gemm._launch_gemv(x, ww, s, None, y, cfg), copies)

                def sep(ww, cfg=cfg):
                    h, _ = add_rms_norm_triton(x, r, g, eps)
                    fp8_gemm._launch_gemv(h, ww, s, None, y, cfg)

                t["norm_kernel+gemv"] = fp8_gemm.time_cold(sep, copies)
                t["fused_norm_only"] = fp8_gemm.time_cold(
                    lambda ww, cfg=cfg: fp8_gemm._launch_gemv(x, ww, s, None, y, cfg,
                                                              norm=fp8_gemm.GemvNorm(g, eps)), copies)
                for late in (int(v) for v in args.late.split(",")):
                    fp8_gemm.NORM_LATE_STORE = late
                    t[f"fused_add_norm_late{late}"] = fp8_gemm.time_cold(
                        lambda ww, cfg=cfg: fp8_gemm._launch_gemv(
                            x, ww, s, None, y, cfg, norm=fp8_gemm.GemvNorm(g, eps, r), sum_out=total),
                        copies)
                fp8_gemm.NORM_LATE_STORE = 0
                gbs = q.nbytes / t["gemv"] / 1e9
                row = {"shape": name, "n": n, "k": k, "kind": kind, "cfg": list(cfg),
                       **{f"{a}_us": v * 1e6 for a, v in t.items()}, "gemv_gbs": gbs}
                rows.append(row)
                print(" ".join(f"{a}={v:.2f}" if isinstance(v, float) else f"{a}={v}"
                               for a, v in row.items()), flush=True)
            del copies
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
