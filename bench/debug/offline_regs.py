"""Registers, spills and shared memory of the decode attention kernel's shapes, compiled
for sm_90a on a machine without a GPU (Triton's bundled ptxas), with the occupancy they
allow on an H200 (65,536 registers, 228 KB shared memory, 64 warps per SM).

    python bench/debug/offline_regs.py [--kv fp8|bf16] [--sass FILE]
"""
from __future__ import annotations

import argparse
import itertools
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lmnb.runtime.attention import triton_kernels as tk

TARGET = GPUTarget("cuda", 90, 32)
# the int arguments a llama3-8b decode step passes as multiples of 16 (Triton specializes
# those on the device); stride_st (= KV heads) and num_splits are not
DIVISIBLE_INTS = ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh",
                  "stride_ot", "stride_oh", "stride_mb", "stride_mh", "stride_ms", "stride_lb",
                  "stride_lh", "stride_r2t", "head_dim")


def compile_decode(kv: str, f16: bool, block_n: int, warps: int, stages: int, words: bool,
                   direct: bool = True, kernel=None):
    kernel = kernel or tk._decode_split_kernel
    ptr_kv = "*fp8e4nv" if kv == "fp8" else "*bf16"
    sig = {}
    for name in kernel.arg_names:
        sig[name] = "i32"
    for name in ("Q", "O"):
        sig[name] = "*bf16"
    sig["K"] = sig["V"] = ptr_kv
    sig["KS"] = sig["VS"] = "*fp32" if kv == "fp8" else ptr_kv
    for name in ("MidO", "MidLse"):
        sig[name] = "*fp32"
    for name in ("ReqToToken", "ReqPoolIdx", "SeqLens"):
        sig[name] = "*i32"
    sig["sm_scale_log2"] = "fp32"
    consts = dict(GROUP=4, BLOCK_H=16, BLOCK_N=block_n, BLOCK_D=128, DIRECT=direct,
                  DOT_PREC="tf32", QUANT=kv == "fp8", F16=f16, PDL=True, WORDS=words,
                  HEADS_FIRST=True)
    for c in consts:
        sig[c] = "constexpr"
    src = ASTSource(kernel, sig, constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()},
                    attrs={(kernel.arg_names.index(n),): [["tt.divisibility", 16]]
                           for n in ("Q", "K", "V", "KS", "VS", "O", "MidO", "MidLse", "ReqToToken",
                                     "ReqPoolIdx", "SeqLens") + DIVISIBLE_INTS})
    return triton.compile(src, target=TARGET, options={"num_warps": warps, "num_stages": stages})


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, spill stores) of a cubin, read by the bundled cuobjdump."""
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(bindir / "cuobjdump"), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", out).group(1))
    spills = int(re.search(r"STACK:(\d+)", out).group(1))
    return regs, spills


def occupancy(regs: int, warps: int, smem: int) -> int:
    per_warp = ((regs * 32 + 255) // 256) * 256
    by_regs = 65536 // (per_warp * warps)
    by_smem = (228 * 1024) // max(1, smem + 1024)
    return min(by_regs, by_smem, 64 // warps, 32) * warps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kv", default="fp8")
    ap.add_argument("--shapes", default=None, help="f16_bn_warps_stages_words;...")
    ap.add_argument("--sass", default=None)
    args = ap.parse_args()
    if args.shapes:
        shapes = [tuple(int(x) if x.isdigit() else x == "True" for x in s.split("_"))
                  for s in args.shapes.split(";")]
    else:
        shapes = list(itertools.product((True, False), (32, 64, 128), (1, 2, 4, 8), (1, 2, 3), (True,)))
    for f16, bn, w, st, words in shapes:
        if bn * 128 // (32 * w) > 256:
            continue
        try:
            k = compile_decode(args.kv, f16, bn, w, st, words)
        except Exception as e:  # noqa: BLE001
            print(f"{f16} {bn} {w} {st} {words}: {type(e).__name__}: {str(e)[:100]}")
            continue
        smem = k.metadata.shared
        regs, spills = resource_usage(k.asm["cubin"])
        print(f"f16={f16!s:5} bn={bn:3} warps={w} stages={st} words={words}: regs={regs} "
              f"stack={spills} smem={smem} warps/SM={occupancy(regs, w, smem)}", flush=True)
        if args.sass:
            with open(args.sass, "a") as f:
                f.write(f"// {f16} {bn} {w} {st} {words}\n{k.asm.get('sass', '')}\n")


if __name__ == "__main__":
    main()
