"""GPU kernel benchmark: attention backends over the token pool, and the fused ops.

One attention layer of the llama3-8b shape (32 query heads, 8 KV heads, head_dim 128,
bf16) with every request's slots scattered at random over the pool, as after a while of
radix-cache churn. Side by side in one run: the triton backend (eager and replayed from a
CUDA graph), the torch reference backend, and flashinfer where it is installed. Times are
medians of `triton.testing.do_bench` after warm-up; GB/s counts the K/V bytes a decode
step must read, next to the copy bandwidth measured in the same run (the roofline).

    python bench/kernels.py [--quick] [--no-tune] [--out bench/results/kernels_h100.json]

Prints one `name key=value ...` line per case; writes JSON with GPU, versions and date.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool, ReqToTokenPool

H, KVH, D, DTYPE = 32, 8, 128, torch.bfloat16
DECODE = [(1, 1024), (1, 8192), (1, 32768), (8, 4096), (32, 2048), (64, 1024), (64, 4096),
          (128, 2048)]
EXTEND = [(1, 0, 4096), (8, 2048, 512), (32, 1024, 64), (4, 8000, 128), (1, 8000, 256)]  # (bs, prefix, ext)
TUNE = [(1, 2048), (1, 8192), (1, 32768), (8, 4096), (64, 4096)]
DECODE_CONFIGS = [(32, 4, 2), (32, 2, 2), (64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 4, 2),
                  (128, 8, 2)]
EXTEND_TUNE = [(1, 0, 4096), (8, 2048, 512), (32, 1024, 64), (4, 8000, 128), (1, 8000, 256),
               (2, 16000, 64), (16, 4000, 32)]
EXTEND_CONFIGS = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3),
                  (128, 128, 8, 2), (128, 32, 4, 3), (64, 128, 4, 2), (128, 64, 4, 3),
                  (64, 64, 8, 2), (32, 64, 4, 3), (16, 64, 4, 3)]


def bench_ms(fn) -> float:
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_ms(fn) -> float:
    """Time `fn` replayed from a CUDA graph (no launch overhead; L2 flushed each run)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return bench_ms(graph.replay)


def emit(rows: list, name: str, **kv) -> None:
    rows.append({"name": name, **kv})
    print(name, " ".join(f"{k}={_fmt(v)}" for k, v in kv.items()), flush=True)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def copy_bandwidth_gbps() -> float:
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = bench_ms(lambda: y.copy_(x))
    return 2 * x.numel() / ms / 1e6


def make_step(mode: Mode, bs: int, prefix: int, ext: int, seed: int = 0):
    """A pool holding `bs` requests of prefix+ext tokens at scattered slots, the batch of
    one step over them, and this step's q/k/v."""
    g = torch.Generator().manual_seed(seed)
    seq = prefix + ext
    size = bs * seq + 64
    pool = KVPool(size, 1, KVH, D, DTYPE, torch.device("cuda"))
    pool.k[0].normal_()
    pool.v[0].normal_()
    table = ReqToTokenPool(bs, seq, torch.device("cuda"))
    slots = (torch.randperm(size, generator=g) + 1)[: bs * seq].view(bs, seq)
    table.table.copy_(slots)
    loc = slots[:, prefix:].reshape(-1)
    batch = ForwardBatch.build(mode, [0] * (bs * ext), list(range(bs)), [prefix] * bs,
                               [ext] * bs, loc, table.table, [])
    q, k, v = (torch.randn(bs * ext, n, D, device="cuda", dtype=DTYPE) for n in (H, KVH, KVH))
    return pool, batch, (q, k, v)


def backends() -> dict:
    from lmnb.runtime.attention.torch_backend import TorchBackend
    from lmnb.runtime.attention.triton_backend import TritonBackend
    out = {"triton": TritonBackend, "torch": TorchBackend}
    if importlib.util.find_spec("flashinfer") is not None:
        try:
            from lmnb.runtime.attention.flashinfer_backend import FlashInferBackend
            out["flashinfer"] = FlashInferBackend
        except ValueError as e:
            print(f"# flashinfer not usable: {e}")
    return out


def time_backend(cls, pool, batch, qkv) -> float:
    b = cls(H, KVH, D, D ** -0.5)
    b.init_forward(batch)
    b.forward(*qkv, 0, batch, pool)  # compiles / plans outside the timing
    torch.cuda.synchronize()
    return bench_ms(lambda: b.forward(*qkv, 0, batch, pool))


def time_triton_graph(pool, batch, qkv) -> float:
    from lmnb.runtime.attention.triton_backend import TritonBackend
    b = TritonBackend(H, KVH, D, D ** -0.5)
    b.init_cuda_graph(batch.batch_size, max(batch.seq_lens_cpu), torch.device("cuda"))
    b.init_forward_graph(batch)
    b.forward(*qkv, 0, batch, pool)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        b.forward(*qkv, 0, batch, pool)
    return bench_ms(graph.replay)


def run_decode(rows, names, hbm):
    for bs, ctx in DECODE:
        pool, batch, qkv = make_step(Mode.DECODE, bs, ctx - 1, 1)
        kv_bytes = 2 * bs * ctx * KVH * D * DTYPE.itemsize
        times = {n: time_backend(cls, pool, batch, qkv) for n, cls in names.items()}
        times["triton_graph"] = time_triton_graph(pool, batch, qkv)
        best = min(times["triton"], times["triton_graph"])
        fields = {f"{n}_us": t * 1e3 for n, t in times.items()}
        emit(rows, "decode", bs=bs, ctx=ctx, **fields,
             speedup_vs_torch=times["torch"] / times["triton"],
             triton_GBps=kv_bytes / best / 1e6, roofline_frac=kv_bytes / best / 1e6 / hbm)
        del pool, batch, qkv
        torch.cuda.empty_cache()


def run_tune(rows):
    """Split count and block shape of the decode kernel around the defaults."""
    from lmnb.runtime.attention import triton_kernels as tk
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for bs, ctx in TUNE:
        pool, batch, (q, _, _) = make_step(Mode.DECODE, bs, ctx - 1, 1)
        default = tk.decode_num_splits(bs, KVH, ctx, sms)
        args = (q, pool.k[0], pool.v[0])
        ref = torch.empty_like(q)
        tk.decode_attention(*args, ref, batch.req_to_token, batch.req_pool_indices,
                            batch.seq_lens, D ** -0.5, default)
        for splits in sorted({max(1, default // 2), default, 2 * default, 4 * default}):
            for block_n, warps, stages in DECODE_CONFIGS:
                o = torch.empty_like(q)
                ms = graph_ms(functools.partial(
                    tk.decode_attention, *args, o, batch.req_to_token, batch.req_pool_indices,
                    batch.seq_lens, D ** -0.5, splits, block_n=block_n, num_warps=warps,
                    num_stages=stages))
                err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                emit(rows, "decode_tune", bs=bs, ctx=ctx, splits=splits, default=default,
                     block_n=block_n, warps=warps, stages=stages, us=ms * 1e3,
                     GBps=2 * bs * ctx * KVH * D * 2 / ms / 1e6, err=err)
        del pool, batch
        torch.cuda.empty_cache()


def run_tune_extend(rows):
    """Block shapes of the extend kernel around the default."""
    from lmnb.runtime.attention import triton_kernels as tk
    for bs, prefix, ext in EXTEND_TUNE:
        pool, batch, (q, _, _) = make_step(Mode.EXTEND, bs, prefix, ext)
        args = (q, pool.k[0], pool.v[0])
        rest = (batch.req_to_token, batch.req_pool_indices, batch.prefix_lens,
                batch.extend_lens, batch.extend_starts, ext, D ** -0.5)
        ref = tk.extend_attention(*args, torch.empty_like(q), *rest)
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        default = tk.extend_config(D, DTYPE, ext, bs, H, sms)
        flops = 4 * D * H * bs * (ext * prefix + ext * (ext + 1) / 2)
        for bm, bn, warps, stages in EXTEND_CONFIGS:
            cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}
            o = torch.empty_like(q)
            try:
                ms = graph_ms(functools.partial(tk.extend_attention, *args, o, *rest, cfg))
            except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: report it
                emit(rows, "extend_tune", bs=bs, prefix=prefix, ext=ext, cfg=str(cfg),
                     error=type(e).__name__)
                continue
            err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
            emit(rows, "extend_tune", bs=bs, prefix=prefix, ext=ext, block_m=bm, block_n=bn,
                 warps=warps, stages=stages, default=cfg == default, us=ms * 1e3,
                 TFLOPs=flops / ms / 1e9, err=err)
        del pool, batch
        torch.cuda.empty_cache()


def run_extend(rows, names):
    for bs, prefix, ext in EXTEND:
        pool, batch, qkv = make_step(Mode.EXTEND, bs, prefix, ext)
        flops = 4 * D * H * bs * (ext * prefix + ext * (ext + 1) / 2)
        times = {n: time_backend(cls, pool, batch, qkv) for n, cls in names.items()}
        fields = {f"{n}_us": t * 1e3 for n, t in times.items()}
        emit(rows, "extend", bs=bs, prefix=prefix, ext=ext, **fields,
             speedup_vs_torch=times["torch"] / times["triton"],
             triton_TFLOPs=flops / times["triton"] / 1e9)
        del pool, batch, qkv
        torch.cuda.empty_cache()


def run_fused(rows, hbm):
    from lmnb.runtime.kernels import activation, norm, reference, rope
    t, hidden, inter = 4096, 4096, 14336
    x = torch.randn(t, hidden, device="cuda", dtype=DTYPE)
    r = torch.randn_like(x)
    w = torch.randn(hidden, device="cuda", dtype=DTYPE)
    gu = torch.randn(t, 2 * inter, device="cuda", dtype=DTYPE)
    qkv = torch.randn(t, (H + 2 * KVH) * D, device="cuda", dtype=DTYPE)
    q = qkv[:, : H * D].view(t, H, D)
    k = qkv[:, H * D : (H + KVH) * D].view(t, KVH, D)
    pos = torch.randint(0, 8192, (t,), device="cuda")
    cos = torch.randn(8192, D, device="cuda", dtype=DTYPE)
    sin = torch.randn(8192, D, device="cuda", dtype=DTYPE)
    x_bytes = x.numel() * 2
    cases = {
        "rms_norm": (lambda: norm.rms_norm_triton(x, w, 1e-5),
                     lambda: reference.rms_norm_ref(x, w, 1e-5), 2 * x_bytes),
        "add_rms_norm": (lambda: norm.add_rms_norm_triton(x, r, w, 1e-5),
                         lambda: reference.add_rms_norm_ref(x, r, w, 1e-5), 4 * x_bytes),
        "rotary": (lambda: rope.rotary_triton(q, k, pos, cos, sin),
                   lambda: reference.rotary_ref(q, k, pos, cos, sin),
                   2 * (q.numel() + k.numel()) * 2),
        "silu_and_mul": (lambda: activation.silu_and_mul_triton(gu),
                         lambda: reference.silu_and_mul_ref(gu), gu.numel() * 2 * 3 // 2),
    }
    for name, (fused, ref, nbytes) in cases.items():
        tf, tr = bench_ms(fused), bench_ms(ref)
        emit(rows, "fused", op=name, tokens=t, triton_us=tf * 1e3, torch_us=tr * 1e3,
             speedup=tr / tf, GBps=nbytes / tf / 1e6, roofline_frac=nbytes / tf / 1e6 / hbm)


def meta() -> dict:
    import triton
    props = torch.cuda.get_device_properties(0)
    out = {"gpu": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
           "cuda": torch.version.cuda, "triton": triton.__version__,
           "python": platform.python_version(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "shape": {"num_heads": H, "num_kv_heads": KVH, "head_dim": D, "dtype": str(DTYPE)}}
    if importlib.util.find_spec("flashinfer") is not None:
        try:
            import flashinfer
            out["flashinfer"] = flashinfer.__version__
        except Exception as e:  # noqa: BLE001 - report, don't fail the bench
            out["flashinfer"] = f"unusable: {e}"
    return out


def default_out(gpu: str) -> str:
    slug = "h100" if "H100" in gpu else "".join(c for c in gpu.lower() if c.isalnum())[-12:]
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                        f"kernels_{slug}.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true", help="first three decode shapes only")
    ap.add_argument("--no-tune", action="store_true", help="skip the kernel block sweeps")
    ap.add_argument("--tune-only", choices=["all", "decode", "extend"],
                    help="only the kernel block sweeps (all, or one kernel's)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernels.py needs a CUDA device")
    global DECODE
    if args.quick:
        DECODE = DECODE[:3]
    info = meta()
    print("#", json.dumps(info), flush=True)
    rows: list = []
    hbm = copy_bandwidth_gbps()
    emit(rows, "hbm_copy", GBps=hbm)
    names = backends()
    if not args.tune_only:
        run_decode(rows, names, hbm)
        run_extend(rows, names)
        run_fused(rows, hbm)
    if not args.no_tune:
        if args.tune_only != "extend":
            run_tune(rows)
        if args.tune_only != "decode":
            run_tune_extend(rows)
    out = args.out or default_out(info["gpu"])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({**info, "hbm_copy_GBps": hbm, "results": rows}, f, indent=1)
    print(f"# wrote {out}")


if __name__ == "__main__":
    main()
