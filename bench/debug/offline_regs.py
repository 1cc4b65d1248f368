"""Registers, spills and shared memory of the decode attention kernel's shapes, compiled
for sm_90a on a machine without a GPU (Triton's bundled ptxas), with the occupancy they
allow on an H200 (65,536 registers, 228 KB shared memory, 64 warps per SM).

    python bench/debug/offline_regs.py [--kv fp8|bf16] [--shapes "True_64_2_3_True;..."] [--loop]

--loop also prints the main loop's instructions (the body between the last backward branch
and its target in the SASS) by opcode, and per K/V byte of one BLOCK_N-key tile: with
registers, the kernel's cost per byte can be compared without a GPU (2026-12-03: the
default FP8 shape issues 2.2x the bf16 kernel's instructions per byte).
"""
from __future__ import annotations

import argparse
import collections
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


def cuobjdump(cubin: bytes, *flags: str) -> str:
    """The bundled cuobjdump's output for a cubin."""
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(bindir / "cuobjdump"), *flags, f.name], capture_output=True,
                              text=True, check=True).stdout


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, stack bytes) of a cubin."""
    out = cuobjdump(cubin, "--dump-resource-usage")
    return int(re.search(r"REG:(\d+)", out).group(1)), int(re.search(r"STACK:(\d+)", out).group(1))


def main_loop(sass: str) -> collections.Counter:
    """Opcodes of the longest loop body (a backward branch and its target)."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in
           (re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in sass.splitlines()) if m]
    best: list[str] = []
    for addr, text in ins:
        tgt = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
        if tgt and int(tgt.group(1), 16) < addr:
            body = [t for a, t in ins if int(tgt.group(1), 16) <= a <= addr]
            best = body if len(body) > len(best) else best
    return collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in best)


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
    ap.add_argument("--loop", action="store_true")
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
        if args.loop:
            ops = main_loop(cuobjdump(k.asm["cubin"], "-sass"))
            tile_bytes = 2 * bn * 128 * (1 if args.kv == "fp8" else 2)
            total = sum(ops.values())
            print(f"    loop: {total} instructions per warp, {total * w / tile_bytes:.3f} per K/V byte; "
                  + " ".join(f"{op}={n}" for op, n in ops.most_common(12)), flush=True)
        if args.sass:
            with open(args.sass, "a") as f:
                f.write(f"// {f16} {bn} {w} {st} {words}\n{k.asm.get('sass', '')}\n")


if __name__ == "__main__":
    main()
