"""FP8 decode GEMM tiles on the GPU: every candidate tile (GEMV, split-K, skinny tl.dot,
_scaled_mm) against bf16 `F.linear` on the 8B projection shapes, then a whole step's
projections in one graph.

    python bench/fp8_sweep.py --out $OUT/fp8_sweep.json [--rows 1,2,4,8,16,64,256]

Timing (fp8_gemm.time_cold): each case runs over distinct copies of its weight (about
256 MB together, over 4x the L2) back to back inside one CUDA graph, so weights stream
from HBM and launch gaps are those of a captured decode step; the median of 5 replays,
per call. GB/s counts the weight bytes (and the activations) once per call. Kernels are
compiled first in a few worker processes (Triton's disk cache), then timed in this one.
Rows: `sweep` (one per case), `best` (fastest FP8 case per shape and row count against
bf16), `step` (32 layers of q/k/v, o, gate/up, down on distinct weights, plus the LM head,
with the best tile per shape: the projections' share of a batch-1 decode step).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
HEAD = (128256, 4096)
LAYERS = 32

EXTRA_GEMV = [(16, 512, 4), (32, 256, 4), (2, 1024, 2), (4, 1024, 4)]


def cases(rows: list[int]) -> list[tuple]:
    """(shape, m, kind, cfg) for every case timed. Kinds: bf16 (cuBLAS), gemv_bf16 (the
    GEMV on the bf16 weight), gemv / w8a16 / w8a8 / scaled_mm (FP8, through
    fp8_gemm.launch_candidate), gemv_act (down: silu(gate) * up fused); a `_nopdl`
    suffix runs the case with LMNB_PDL=0."""
    from lmnb.runtime.kernels import fp8_gemm

    out = []
    for name, (n, k) in SHAPES.items():
        for m in rows:
            out.append((name, m, "bf16", None))
            if m <= 4:
                bm = fp8_gemm._gemv_rows(m)
                tiles = list(fp8_gemm.GEMV_TILES[bm]) + (EXTRA_GEMV if m == 1 else [])
                for bn, bk, w in tiles:
                    out.append((name, m, "gemv", (bn, bk, w, 1)))
                    out.append((name, m, "gemv", (bn, bk, w, 1, True)))
                    if m == 1:
                        out.append((name, m, "gemv_nopdl", (bn, bk, w, 1)))
                if m == 1:
                    for cfg in fp8_gemm.gemv_configs(1, n, k, None)[:4]:
                        out.append((name, m, "gemv_bf16", cfg))
                    if name == "down":
                        for cfg in fp8_gemm.gemv_configs(1, n, k, None)[:4]:
                            out.append((name, m, "gemv_act", cfg))
            if m <= 16:
                for cfg in fp8_gemm.w8a16_configs(m, n, k, None):
                    out.append((name, m, "w8a16", cfg))
            else:
                for cfg in fp8_gemm.w8a8_configs(m, n, k):
                    out.append((name, m, "w8a8", cfg))
            if m >= 8:
                out.append((name, m, "scaled_mm", None))
    return out


class Weights:
    """Cold copies of each shape's weight: bf16 and per-channel FP8."""

    def __init__(self) -> None:
        from lmnb.runtime.kernels import fp8_gemm
        from lmnb.runtime.quant.fp8_reference import quantize_per_channel

        g = torch.Generator(device="cuda").manual_seed(0)
        self.w16, self.w8 = {}, {}
        for name, (n, k) in SHAPES.items():
            w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
            q, s = quantize_per_channel(w)
            self.w16[name] = fp8_gemm.cold_copies(w)
            self.w8[name] = [(c, s.clone()) for c in fp8_gemm.cold_copies(q)]


def launcher(kind: str, cfg, x: torch.Tensor, y: torch.Tensor):
    from lmnb.runtime.kernels import fp8_gemm

    kind = kind.removesuffix("_nopdl")
    if kind == "bf16":
        return lambda w: torch.mm(x, w.t(), out=y)
    if kind == "gemv_bf16":
        return lambda w: fp8_gemm._launch_gemv(x, w, None, None, y, cfg)
    if kind == "gemv_act":   # x is [M, 2K]
        return lambda w: fp8_gemm._launch_gemv(x, w[0], w[1], None, y, cfg, act=1)
    return lambda w: fp8_gemm.launch_candidate((kind, cfg), x, w[0], w[1], None, y)


@contextlib.contextmanager
def pdl_off(kind: str):
    if not kind.endswith("_nopdl"):
        yield
        return
    os.environ["LMNB_PDL"] = "0"
    try:
        yield
    finally:
        os.environ.pop("LMNB_PDL", None)


def _compile_worker(chunk: list[tuple]) -> int:
    """Run each case once on small stand-in weights of the real shapes (compiles into
    Triton's disk cache for the timing process)."""
    from lmnb.runtime.quant.fp8_reference import quantize_per_channel

    done, ws = 0, {}
    for name, m, kind, cfg in chunk:
        if kind in ("bf16", "scaled_mm"):
            continue
        n, k = SHAPES[name]
        if name not in ws:
            w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
            ws[name] = (w, quantize_per_channel(w))
        w, qs = ws[name]
        x = torch.randn(m, 2 * k if kind == "gemv_act" else k, device="cuda", dtype=torch.bfloat16)
        y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        try:
            with pdl_off(kind):
                launcher(kind, cfg, x, y)(w if kind == "gemv_bf16" else qs)
            done += 1
        except Exception as e:  # noqa: BLE001 - reported, the timing pass skips it too
            print(f"# compile failed {name} m={m} {kind} {cfg}: {str(e)[:200]}", flush=True)
    torch.cuda.synchronize()
    return done


def precompile(all_cases: list[tuple], workers: int) -> None:
    import multiprocessing as mp

    from lmnb.runtime.kernels import fp8_gemm

    # one compile per (kind, rows, tile, split or not): N, K and strides only reach the
    # compiled code through their divisibility, the same for every 8B shape
    todo = {}
    for c in all_cases:
        if c[2] not in ("bf16", "scaled_mm"):
            at = 3 if c[2].startswith("gemv") else 5   # where split_k sits in the config
            cfg = tuple(v > 1 if i == at else v for i, v in enumerate(c[3]))   # split or not
            todo.setdefault((c[2], c[1], cfg), c)
        elif c[2] == "scaled_mm":   # quantize_rows per row count
            todo.setdefault(("quant", c[1]), (c[0], c[1], "w8a8", fp8_gemm.w8a8_configs(c[1], 4096, 4096)[0]))
    todo = list(todo.values())
    chunks = [todo[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
        n = sum(ex.map(_compile_worker, chunks))
    print(f"# precompiled {n} cases in {workers} processes", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,2,4,8,16,64,256")
    ap.add_argument("--out", default="bench/results/fp8_sweep.json")
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 4))
    ap.add_argument("--budget-s", type=float, default=240.0)
    args = ap.parse_args()
    from common import emit, environment
    from gpu_helpers import hbm_bandwidth_gbs

    from lmnb.runtime.kernels import fp8_gemm

    t0 = time.perf_counter()
    rows = [int(r) for r in args.rows.split(",")]
    all_cases = cases(rows)
    print(f"# {len(all_cases)} cases", flush=True)
    precompile(all_cases, args.workers)
    print(f"# compile {time.perf_counter() - t0:.1f}s", flush=True)
    bw = hbm_bandwidth_gbs() * 1e9
    ws = Weights()
    out_rows, best = [emit("setup", hbm_gbs=bw / 1e9)], {}
    for name, m, kind, cfg in all_cases:
        if time.perf_counter() - t0 > args.budget_s:
            print("# budget spent, stopping the sweep", flush=True)
            break
        n, k = SHAPES[name]
        g = torch.Generator(device="cuda").manual_seed(m)
        x = torch.randn(m, 2 * k if kind == "gemv_act" else k, device="cuda", generator=g).to(torch.bfloat16)
        y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        weights = ws.w16[name] if kind in ("bf16", "gemv_bf16") else ws.w8[name]
        try:
            with pdl_off(kind):
                t = fp8_gemm.time_cold(launcher(kind, cfg, x, y), weights)
        except Exception as e:  # noqa: BLE001
            print(f"# failed {name} m={m} {kind} {cfg}: {str(e)[:200]}", flush=True)
            continue
        wbytes = n * k * (2 if kind in ("bf16", "gemv_bf16") else 1)
        gbs = (wbytes + 2 * m * (n + k)) / t
        out_rows.append(emit("sweep", shape=name, n=n, k=k, m=m, kind=kind,
                             cfg="/".join(map(str, cfg)) if cfg else "-", us=t * 1e6,
                             gbs=gbs / 1e9, of_hbm=gbs / bw))
        key = (name, m, {"bf16": "bf16", "gemv_bf16": "bf16", "gemv_act": "act"}.get(kind.removesuffix("_nopdl"), "fp8"))
        if kind.endswith("_nopdl"):
            key = key + ("nopdl",)
        if key not in best or t < best[key][0]:
            best[key] = (t, kind, cfg)
    for name, (n, k) in SHAPES.items():
        for m in rows:
            if (name, m, "fp8") in best and (name, m, "bf16") in best:
                t8, kind8, cfg8 = best[(name, m, "fp8")]
                t16, kind16, cfg16 = best[(name, m, "bf16")]
                out_rows.append(emit("best", shape=name, m=m, fp8_kind=kind8,
                                     fp8_cfg="/".join(map(str, cfg8 or ())), fp8_us=t8 * 1e6,
                                     fp8_gbs=n * k / t8 / 1e9, bf16_kind=kind16,
                                     bf16_cfg="/".join(map(str, cfg16 or ())), bf16_us=t16 * 1e6,
                                     bf16_gbs=2 * n * k / t16 / 1e9, speedup=t16 / t8))
    del ws
    torch.cuda.empty_cache()
    out_rows += step_rows(best, bw, emit)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(), "results": out_rows}, indent=2, default=str))
    print(f"wrote {path} in {time.perf_counter() - t0:.0f}s")


def step_rows(best: dict, bw: float, emit) -> list[dict]:
    """Batch 1: the 32 layers' projections on distinct weights and the LM head, in one
    graph, with the best FP8 tile per shape, against bf16 (cuBLAS) on the same shapes."""
    from lmnb.runtime.kernels import fp8_gemm
    from lmnb.runtime.quant.fp8_reference import quantize_per_channel

    rows = []
    if not all((name, 1, "fp8") in best for name in SHAPES):
        return rows
    g = torch.Generator(device="cuda").manual_seed(1)
    x = {name: torch.randn(1, k, device="cuda", generator=g).to(torch.bfloat16) for name, (_, k) in SHAPES.items()}
    y = {name: torch.empty(1, n, device="cuda", dtype=torch.bfloat16) for name, (n, _) in SHAPES.items()}
    layers8 = []
    for _ in range(LAYERS):
        layer = {}
        for name, (n, k) in SHAPES.items():
            layer[name] = quantize_per_channel(torch.randn(n, k, device="cuda", generator=g) * 0.02)
        layers8.append(layer)
    b8 = sum(n * k for n, k in SHAPES.values()) * LAYERS
    for mode, key in (("fp8", ()), ("fp8_nopdl", ("nopdl",))):
        if not all((name, 1, "fp8") + key in best for name in SHAPES):
            continue
        fns = []
        with pdl_off("x_nopdl" if key else "x"):
            for layer in layers8:
                for name in SHAPES:
                    _, kind, cfg = best[(name, 1, "fp8") + key]
                    f = launcher(kind, cfg, x[name], y[name])
                    fns.append(lambda w=layer[name], f=f: f(w))
            t8 = fp8_gemm.time_graph(fns, replays=5) * len(fns)
        rows.append(emit("step", mode=mode, part="projections", ms=t8 * 1e3, gbs=b8 / t8 / 1e9,
                         floor_ms=b8 / bw * 1e3, of_hbm=b8 / t8 / bw))
    del layers8
    torch.cuda.empty_cache()
    hx = torch.randn(1, HEAD[1], device="cuda", dtype=torch.bfloat16)
    hy = torch.empty(1, HEAD[0], device="cuda", dtype=torch.bfloat16)
    head16 = (torch.randn(*HEAD, device="cuda") * 0.02).to(torch.bfloat16)
    th16 = fp8_gemm.time_cold(lambda w: torch.mm(hx, w.t(), out=hy), [head16, head16.clone()])
    rows.append(emit("step", mode="bf16", part="lm_head", ms=th16 * 1e3, gbs=head16.nbytes / th16 / 1e9))
    hq, hs = quantize_per_channel(head16)
    for cfg in ((8, 512, 4, 1), (16, 512, 4, 1), (4, 1024, 4, 1), (8, 1024, 8, 1)):
        th8 = fp8_gemm.time_cold(lambda w, c=cfg: fp8_gemm._launch_gemv(hx, w, hs, None, hy, c), [hq, hq.clone()])
        rows.append(emit("step", mode="fp8", part="lm_head", cfg="/".join(map(str, cfg)), ms=th8 * 1e3,
                         gbs=hq.nbytes / th8 / 1e9))
    for cfg in ((8, 512, 4, 1), (4, 512, 4, 1), (8, 256, 4, 1)):
        th = fp8_gemm.time_cold(lambda w, c=cfg: fp8_gemm._launch_gemv(hx, w, None, None, hy, c), [head16, head16.clone()])
        rows.append(emit("step", mode="bf16_gemv", part="lm_head", cfg="/".join(map(str, cfg)), ms=th * 1e3,
                         gbs=head16.nbytes / th / 1e9))
    del head16, hq
    torch.cuda.empty_cache()
    layers16 = [{name: (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
                 for name, (n, k) in SHAPES.items()} for _ in range(LAYERS)]
    for mode in ("bf16", "bf16_gemv"):
        fns = []
        for layer in layers16:
            for name in SHAPES:
                if mode == "bf16":
                    f = launcher("bf16", None, x[name], y[name])
                else:
                    _, kind, cfg = best[(name, 1, "bf16")]
                    f = launcher(kind, cfg, x[name], y[name])
                fns.append(lambda w=layer[name], f=f: f(w))
        t16 = fp8_gemm.time_graph(fns, replays=5) * len(fns)
        rows.append(emit("step", mode=mode, part="projections", ms=t16 * 1e3, gbs=2 * b8 / t16 / 1e9,
                         floor_ms=2 * b8 / bw * 1e3, of_hbm=2 * b8 / t16 / bw))
    return rows


if __name__ == "__main__":
    main()
