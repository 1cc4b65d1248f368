"""FP8 vs bf16 on one GPU, side by side in one process: kernel GB/s, accuracy, batch-1
latency against the roofline, and the throughput workload.

    python bench/fp8_bench.py --model dummy:llama3-8b --out $OUT/fp8_llama3-8b.json

Modes (--modes): bf16; fp8 (FP8 weights); fp8kv (FP8 weights + FP8 KV cache,
`kv_cache_dtype="fp8_e4m3"`). All get the same --kv-gb, so the FP8 KV pool holds ~1.9x
the tokens. `kv_kernels` times the decode attention kernel alone over a bf16 and an FP8
pool (GB/s of K/V read); accuracy compares each FP8 mode with bf16, and fp8kv with fp8
(the KV cache's own error).

Parts (--only): kernels (the FP8 dispatch vs bf16 F.linear on the model's projection
shapes, each over distinct weight copies in one CUDA graph: weights from HBM), accuracy (bench/fp8_accuracy.py: FP8 vs bf16 logits on the same random weights,
greedy-token agreement over 256 steps), latency (batch 1, 128 in / 256 out, ms/token and
% of the byte roofline), decode_steps (graph replay alone), throughput (256 requests,
lengths uniform in [100, 1024], ignore_eos), step_profile (kernel time per step of
that workload's decode phase, by kernel class), latency_profile (the same for the batch-1
run, with the GPU's idle gaps). One line per case (`name key=value ...`);
all rows go to --out as JSON with the GPU, versions, load times and the tile configs the
FP8 kernels chose.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, environment
from fp8_accuracy import compare
from gpu_helpers import hbm_bandwidth_gbs, random_tokens, submit_all, timed, weight_bytes_per_step

import lmnb as lm


class Bench:
    def __init__(self, args) -> None:
        self.args, self.rows, self.rts, self.load_s = args, [], {}, {}
        self.bw = hbm_bandwidth_gbs() * 1e9
        self.short = args.model.removeprefix("dummy:")
        self.fp8_decode = None   # the FP8 decode kernel shape kv_kernels chose

    def emit(self, name: str, **fields) -> None:
        self.rows.append(emit(name, model=self.short, **fields))

    @property
    def modes(self) -> list[str]:
        return self.args.modes.split(",")

    def runtime(self, mode: str):
        """'bf16', 'fp8' or 'fp8kv', loaded once (all stay resident: 8B bf16 + 2 x FP8 +
        three 24 GB KV pools fit an H200)."""
        if mode not in self.rts:
            # no drafts (on CUDA none unless asked anyway): accuracy reads one logits row per step
            kw = dict(device=self.args.device, dtype="bfloat16", kv_memory_gb=self.args.kv_gb,
                      context_length=8192, speculative="off")
            if mode in ("fp8", "fp8kv"):
                kw["quantization"] = "fp8"
            if mode == "fp8kv":
                kw["kv_cache_dtype"] = "fp8_e4m3"
            _sync()
            t = time.perf_counter()
            rt = lm.Runtime(self.args.model, **kw)
            _sync()
            self.load_s[mode] = time.perf_counter() - t
            t = time.perf_counter()
            _warm(rt)
            self.emit("load", mode=mode, load_s=self.load_s[mode], warm_s=time.perf_counter() - t,
                      weight_gb=weight_bytes_per_step(rt) / 1e9,
                      gpu_mem_gb=torch.cuda.memory_allocated() / 1e9 if CUDA else 0.0,
                      pool_tokens=rt.pool.size, kv_cache=rt.kv_cache_label.replace(" ", "_"),
                      quantization=(rt.quantization or "none").replace(" ", "_"))
            self.rts[mode] = rt
        return self.rts[mode]


CUDA = torch.cuda.is_available()


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _warm(rt) -> None:
    """Compile kernels, choose FP8 tiles and capture the decode graphs, untimed."""
    rng = random.Random(1)
    prompts = [random_tokens(rng, 40 + 7 * i, rt.model_config.vocab_size) for i in range(8)]
    submit_all(rt, prompts, [{"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}] * 8)
    rt.generate([prompts[0]], max_new_tokens=4, temperature=0, ignore_eos=True)
    rt.flush_cache()


# ---------------------------------------------------------------------------- parts
def kernels_part(b: Bench) -> None:
    """FP8 (what fp8_matmul dispatches to) vs bf16 F.linear on the model's shapes, each timed
    over distinct copies of its weight inside one CUDA graph (fp8_gemm.time_cold: weights
    from HBM, a decode step's launch gaps; bench/fp8_sweep.py times every tile this way)."""
    from lmnb.runtime.models.config import DUMMY_SHAPES, ModelConfig
    from lmnb.runtime.quant.fp8_reference import quantize_per_channel

    cfg = ModelConfig.from_hf(DUMMY_SHAPES[b.short]) if b.short in DUMMY_SHAPES else None
    if cfg is None or not CUDA:
        return
    from lmnb.runtime.kernels import fp8_gemm

    q_size, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {"qkv": (q_size + 2 * kv, cfg.hidden_size), "o": (cfg.hidden_size, q_size),
              "gate_up": (2 * cfg.intermediate_size, cfg.hidden_size),
              "down": (cfg.hidden_size, cfg.intermediate_size)}
    g = torch.Generator(device="cuda").manual_seed(0)
    for name, (n, k) in shapes.items():
        w = (torch.randn(n, k, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
        q, s = quantize_per_channel(w)
        w16, w8 = fp8_gemm.cold_copies(w), fp8_gemm.cold_copies(q)
        for m in (1, 2, 4, 8, 16, 64, 256):
            x = torch.randn(m, k, device="cuda", generator=g).to(torch.bfloat16)
            fp8_gemm.fp8_matmul(x, q, s, None)   # the timed choice, outside the graph
            t8 = fp8_gemm.time_cold(lambda qq, x=x, s=s: fp8_gemm.fp8_matmul(x, qq, s, None), w8)
            t16 = fp8_gemm.time_cold(lambda ww, x=x: F.linear(x, ww), w16)
            b.emit("kernel", shape=name, n=n, k=k, m=m, fp8_us=t8 * 1e6, bf16_us=t16 * 1e6,
                   speedup=t16 / t8, fp8_gbs=n * k / t8 / 1e9, bf16_gbs=2 * n * k / t16 / 1e9,
                   fp8_of_hbm=n * k / t8 / b.bw, bf16_of_hbm=2 * n * k / t16 / b.bw)
        del w16, w8
    torch.cuda.empty_cache()


# (fp16 operands, BLOCK_N, warps, stages, words): the first is the shape before K/V were
# read as words (bytes widened by a cast, V's tile read from shared memory a byte at a time)
FP8_DECODE_SWEEP = [(False, 128, 4, 3, False), (False, 128, 4, 3, True), (True, 128, 4, 3, True),
                    (True, 128, 4, 2, True), (True, 64, 2, 3, True), (True, 32, 1, 3, True)]


def kv_kernels(b: Bench) -> None:
    """The decode attention kernel alone (llama3-8b's 32 query / 8 KV heads, D = 128) over a
    bf16 pool and an FP8 pool holding the same values, at batch sizes and contexts of the
    workloads; GB/s counts the K/V bytes (codes + scales) each step must read. Every FP8
    kernel shape of FP8_DECODE_SWEEP is timed; the best over all cases (sum of times
    relative to bf16) becomes the runtime's `triton_kernels.FP8_DECODE` for the parts
    after this one (--fp8-decode fixes it instead)."""
    if not CUDA:
        return
    from lmnb.runtime.attention import triton_kernels as tk
    from lmnb.runtime.kv_dtype import FP8_KV, quantize_ref
    from lmnb.runtime.memory import KVPool

    h, kvh, d = 32, 8, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    configs = FP8_DECODE_SWEEP if b.args.fp8_decode is None else [b.args.fp8_decode]
    rel = {c: 0.0 for c in configs}
    worst_err = {c: 0.0 for c in configs}
    cases = []
    for bs, ctx in ((1, 4096), (64, 1024), (256, 800), (256, 2048)):
        tokens = bs * ctx
        pools = {dt: KVPool(tokens, 1, kvh, d, dt, torch.device("cuda")) for dt in (torch.bfloat16, FP8_KV)}
        kv = [torch.randn(tokens + 1, kvh, d, device="cuda", generator=g).mul_(0.05).to(torch.bfloat16)
              for _ in range(2)]
        pools[torch.bfloat16].k[0].copy_(kv[0])
        pools[torch.bfloat16].v[0].copy_(kv[1])
        f8 = pools[FP8_KV]
        (f8.k[0][:], f8.k_scale[0][:]), (f8.v[0][:], f8.v_scale[0][:]) = quantize_ref(kv[0]), quantize_ref(kv[1])
        del kv
        table = (torch.randperm(tokens, device="cuda", generator=g).to(torch.int32) + 1).view(bs, ctx)
        rows = torch.arange(bs, device="cuda")
        lens = torch.full((bs,), ctx, device="cuda", dtype=torch.int32)
        q = torch.randn(bs, h, d, device="cuda", generator=g).to(torch.bfloat16)
        o = torch.empty_like(q)
        splits = tk.decode_num_splits(bs, kvh, ctx, torch.cuda.get_device_properties(0).multi_processor_count)
        mid = tk.decode_buffers(bs, h, splits, d, q.device)
        bp = pools[torch.bfloat16]
        t16 = _graph_time(lambda: tk.decode_attention(q, bp.k[0], bp.v[0], o, table, rows, lens,
                                                      d ** -0.5, splits, *mid))
        ref = o.float().clone()
        n16 = tokens * KVPool.bytes_per_token(1, kvh, d, torch.bfloat16)
        b.emit("kv_kernel", kv="bf16", bs=bs, ctx=ctx, splits=splits, us=t16 * 1e6, gbs=n16 / t16 / 1e9,
               of_hbm=n16 / t16 / b.bw)
        n8 = tokens * KVPool.bytes_per_token(1, kvh, d, FP8_KV)
        for c in configs:
            def step(c=c) -> None:
                tk.decode_attention(q, f8.k[0], f8.v[0], o, table, rows, lens, d ** -0.5, splits, *mid,
                                    k_scale=f8.k_scale[0], v_scale=f8.v_scale[0], fp8_config=c)
            t = _graph_time(step)
            err = ((o.float() - ref).norm() / ref.norm()).item()
            rel[c] += t / t16
            worst_err[c] = max(worst_err[c], err)
            b.emit("kv_kernel", kv="fp8", config="_".join(map(str, c)), bs=bs, ctx=ctx, splits=splits,
                   us=t * 1e6, gbs=n8 / t / 1e9, of_hbm=n8 / t / b.bw, speedup=t16 / t, rel_err_vs_bf16=err)
        cases.append((bs, ctx, q, o, table, rows, lens, f8, t16, n8))
        del pools, bp
    # a shape must be as exact as the first (the same codes and scales; only rounding differs)
    ok = [c for c in configs if worst_err[c] <= 1.5 * worst_err[configs[0]] + 2e-3]
    best = min(ok or configs, key=rel.get)
    # more programs for the best shape: the split count at 256 requests (1 = 2048 programs)
    for bs, ctx, q, o, table, rows, lens, f8, t16, n8 in cases:
        if bs < 256:
            continue
        for splits in (2, 4):
            mid = tk.decode_buffers(bs, h, splits, d, q.device)
            t = _graph_time(lambda: tk.decode_attention(
                q, f8.k[0], f8.v[0], o, table, rows, lens, d ** -0.5, splits, *mid,
                k_scale=f8.k_scale[0], v_scale=f8.v_scale[0], fp8_config=best))
            b.emit("kv_kernel_splits", kv="fp8", config="_".join(map(str, best)), bs=bs, ctx=ctx,
                   splits=splits, us=t * 1e6, gbs=n8 / t / 1e9, of_hbm=n8 / t / b.bw, speedup=t16 / t)
    del cases
    torch.cuda.empty_cache()
    _extend_times(b, h, kvh, d, g)
    tk.FP8_DECODE = best
    b.fp8_decode = best
    b.emit("kv_kernel_choice", config="_".join(map(str, best)), mean_time_of_bf16=rel[best] / 4,
           excluded="+".join("_".join(map(str, c)) for c in configs if c not in ok) or "none")


def _extend_times(b: Bench, h: int, kvh: int, d: int, g) -> None:
    """The extend (prefill) kernel over bf16 and FP8 pools: 256 prompts of 128 tokens and
    16 of 1024, no prefix; FP8 with K/V read as words (the runtime's path) and as bytes."""
    from lmnb.runtime.attention import triton_kernels as tk
    from lmnb.runtime.kv_dtype import FP8_KV, quantize_ref
    from lmnb.runtime.memory import KVPool

    for bs, ext in ((256, 128), (16, 1024)):
        tokens = bs * ext
        bp = KVPool(tokens, 1, kvh, d, torch.bfloat16, torch.device("cuda"))
        f8 = KVPool(tokens, 1, kvh, d, FP8_KV, torch.device("cuda"))
        for buf in (bp.k[0], bp.v[0]):
            buf.copy_(torch.randn(tokens + 1, kvh, d, device="cuda", generator=g).mul_(0.05))
        (f8.k[0][:], f8.k_scale[0][:]), (f8.v[0][:], f8.v_scale[0][:]) = quantize_ref(bp.k[0]), quantize_ref(bp.v[0])
        table = (torch.arange(tokens, device="cuda", dtype=torch.int32) + 1).view(bs, ext)
        rows = torch.arange(bs, device="cuda")
        zeros = torch.zeros(bs, device="cuda", dtype=torch.int32)
        lens = torch.full((bs,), ext, device="cuda", dtype=torch.int32)
        starts = torch.arange(bs, device="cuda", dtype=torch.int32) * ext
        q = torch.randn(tokens, h, d, device="cuda", generator=g).to(torch.bfloat16)
        o = torch.empty_like(q)
        t16 = _graph_time(lambda: tk.extend_attention(q, bp.k[0], bp.v[0], o, table, rows, zeros, lens,
                                                      starts, ext, d ** -0.5), reps=5)
        ref = o.float().clone()
        b.emit("kv_extend", kv="bf16", bs=bs, ext=ext, us=t16 * 1e6)
        for words in (True, False):
            tk.FP8_EXTEND_WORDS = words
            t = _graph_time(lambda: tk.extend_attention(q, f8.k[0], f8.v[0], o, table, rows, zeros, lens,
                                                        starts, ext, d ** -0.5, k_scale=f8.k_scale[0],
                                                        v_scale=f8.v_scale[0]), reps=5)
            err = ((o.float() - ref).norm() / ref.norm()).item()
            b.emit("kv_extend", kv="fp8", words=words, bs=bs, ext=ext, us=t * 1e6, speedup=t16 / t,
                   rel_err_vs_bf16=err)
        tk.FP8_EXTEND_WORDS = True
        del bp, f8, q, o
        torch.cuda.empty_cache()


def _graph_time(fn, reps: int = 20) -> float:
    """Median seconds of one call, from CUDA-graph replays of `reps` calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    graph.replay()
    out = []
    for _ in range(5):
        a, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        e.record()
        e.synchronize()
        out.append(a.elapsed_time(e) / 1e3 / reps)
    return statistics.median(out)


def accuracy(b: Bench) -> None:
    """Each FP8 mode against bf16 on the same weights, and FP8 KV against FP8 weights
    alone (the KV cache's own error)."""
    steps = 32 if b.args.small else 256
    pairs = [("bf16", m) for m in b.modes if m != "bf16"]
    if "fp8" in b.modes and "fp8kv" in b.modes:
        pairs.append(("fp8", "fp8kv"))
    for ref_mode, mode in pairs:
        ref, q = b.runtime(ref_mode), b.runtime(mode)
        prompt = random_tokens(random.Random(0), 128, ref.model_config.vocab_size)
        r = compare(ref, q, prompt, steps=steps)
        b.emit("accuracy", mode=mode, against=ref_mode, **r)


def latency(b: Bench) -> None:
    """Batch 1, 128-token prompt, 256 new tokens: decode ms/token against the roofline."""
    out = {}
    for mode in b.modes:
        rt, new = b.runtime(mode), 32 if b.args.small else 256
        prompt = random_tokens(random.Random(0), 128, rt.model_config.vocab_size)

        def once(rt=rt, prompt=prompt, new=new) -> dict:
            return rt.generate([prompt], max_new_tokens=new, temperature=0, ignore_eos=True)[0]["meta"]

        once()
        metas = [once() for _ in range(b.args.repeats)]
        decode_s = statistics.median((m["e2e_latency"] - m["ttft"]) / (m["completion_tokens"] - 1)
                                     for m in metas)
        kv_bytes = rt.pool.token_bytes * (128 + new // 2)   # codes + scales for FP8 KV
        step_bytes = weight_bytes_per_step(rt) + kv_bytes
        floor = step_bytes / b.bw
        out[mode] = decode_s
        b.emit("latency", mode=mode, ms_tok=decode_s * 1e3, tok_s=1 / decode_s,
               floor_ms=floor * 1e3, of_roofline=floor / decode_s,
               achieved_gbs=step_bytes / decode_s / 1e9, hbm_gbs=b.bw / 1e9,
               target_ms=2.6 if mode != "bf16" else None)
    for mode in (m for m in b.modes if m != "bf16" and "bf16" in out):
        b.emit(f"latency_{mode}_vs_bf16", speedup=out["bf16"] / out[mode], ms_tok=out[mode] * 1e3,
               target_ms=2.6, met=out[mode] * 1e3 <= 2.6)
    if "fp8" in out and "fp8kv" in out:
        b.emit("latency_fp8kv_vs_fp8", speedup=out["fp8"] / out["fp8kv"], not_slower=out["fp8kv"] <= out["fp8"] * 1.01)


def decode_steps(b: Bench) -> None:
    """GPU time of one graph replay (padding rows: weights only, no KV)."""
    for mode in b.modes:
        rt = b.runtime(mode)
        runner = rt.engine.runner
        if not CUDA or runner.graphs is None:
            continue
        wbytes = weight_bytes_per_step(rt)
        for bs in (1, 8, 16, 64, 256):
            if not runner.graphs.can_run(bs):
                continue
            step = rt.engine.call(lambda r=runner, n=bs: r.graphs.time_replay(n))
            b.emit("decode_step", mode=mode, bs=bs, step_ms=step * 1e3, tok_s=bs / step,
                   weight_gbs=wbytes / step / 1e9, of_roofline=wbytes / b.bw / step)


def _throughput_workload(vocab: int, seed: int = 0, n: int = 256):
    rng = random.Random(seed)
    lens = [(rng.randint(100, 1024), rng.randint(100, 1024)) for _ in range(n)]
    return [random_tokens(rng, i, vocab) for i, _ in lens], [o for _, o in lens]


def throughput(b: Bench) -> None:
    """256 requests, input and output lengths uniform in [100, 1024], seed 0, ignore_eos.
    Each mode runs the workload twice: the first run (`run=first`) meets shapes the load's
    warm-up did not (prefill batches, extend kernel variants), and Triton kernels compiled
    inside it are listed (`compiles`, `compile_s`: with a cold Triton cache, as on a fresh
    machine, they are compiled there); the second (`run=warm`) is the steady state the
    speedup compares."""
    res = {}
    for mode in b.modes:
        rt = b.runtime(mode)
        prompts, outs = _throughput_workload(rt.model_config.vocab_size, n=16 if b.args.small else 256)
        if b.args.small:
            outs = [o // 20 + 2 for o in outs]
        params = [{"max_new_tokens": o, "temperature": 0, "ignore_eos": True} for o in outs]
        for run in ("first", "warm"):
            rt.flush_cache()
            before = rt.stats()
            with _compile_log() as compiles:
                t = timed(lambda rt=rt, prompts=prompts, params=params: submit_all(rt, prompts, params))
            after = rt.stats()
            res[mode] = sum(outs) / t
            b.emit("throughput", mode=mode, run=run, requests=len(prompts), out_tokens=sum(outs),
                   seconds=t, tok_s=res[mode], decode_steps=after["decode_steps"] - before["decode_steps"],
                   max_bs=after.get("max_batch_size"), pool_tokens=rt.pool.size,
                   kv_cache=rt.kv_cache_label.split(" ")[0], compiles=len(compiles),
                   compile_s=sum(c[1] for c in compiles),
                   compiled="+".join(sorted({c[0] for c in compiles})) or "none")
    for mode in (m for m in b.modes if m != "bf16" and "bf16" in res):
        b.emit(f"throughput_{mode}_vs_bf16", speedup=res[mode] / res["bf16"], target=1.4,
               met=res[mode] / res["bf16"] >= 1.4)


class _compile_log:
    """Triton JIT compiles (kernel name, seconds) while the block runs (Triton's JIT hooks;
    an empty list where this Triton has none)."""

    def __enter__(self) -> list:
        self.log, self.start = [], {}
        try:
            from triton import knobs
        except ImportError:
            self.knobs = None
            return self.log
        self.knobs = knobs.runtime
        self.saved = (self.knobs.jit_cache_hook, self.knobs.jit_post_compile_hook)

        def pre(*, key, fn, **_) -> bool:
            self.start[str(key)] = time.perf_counter()
            return False

        def post(*, key, fn, **_) -> None:
            t0 = self.start.pop(str(key), None)
            self.log.append((getattr(fn, "name", str(fn)).rsplit(".", 1)[-1],
                             time.perf_counter() - t0 if t0 else 0.0))

        self.knobs.jit_cache_hook, self.knobs.jit_post_compile_hook = pre, post
        return self.log

    def __exit__(self, *exc) -> None:
        if self.knobs is not None:
            self.knobs.jit_cache_hook, self.knobs.jit_post_compile_hook = self.saved


def _kernel_class(name: str) -> str:
    """A kernel's part of the step, from its name (Triton kernels keep their function's)."""
    n = name.lower()
    for key, words in (("gemm", ("gemm", "gemv", "w8a16", "_mm", "cutlass", "nvjet", "splitkreduce")),
                       ("quantize", ("quantize",)),
                       ("attention", ("decode", "extend", "attn", "merge")),
                       ("kv_store", ("store_kv", "rope", "rotary", "kv_quant")),
                       ("norm", ("norm",)), ("sampling", ("argmax", "sample", "softmax", "topk"))):
        if any(w in n for w in words):
            return key
    return "other"


def step_profile(b: Bench) -> None:
    """Where a throughput-workload step goes: the workload runs in a thread, and a window
    in its decode phase is traced with torch.profiler (CUDA kernels only, graph replays
    included): GPU ms per step by kernel class, GPU busy share of the window, top kernels.
    The windows of the modes start at the same step, so they see the same batch."""
    import threading

    from torch.profiler import ProfilerActivity, profile

    start_step, window_steps = 150, 60
    for mode in b.modes:
        rt = b.runtime(mode)
        prompts, outs = _throughput_workload(rt.model_config.vocab_size, n=16 if b.args.small else 256)
        if b.args.small:
            start_step, window_steps, outs = 4, 4, [o // 20 + 2 for o in outs]
        params = [{"max_new_tokens": o, "temperature": 0, "ignore_eos": True} for o in outs]
        rt.flush_cache()
        steps0 = rt.stats()["decode_steps"]
        done = threading.Event()
        th = threading.Thread(target=lambda: (submit_all(rt, prompts, params), done.set()))
        th.start()
        while rt.stats()["decode_steps"] - steps0 < start_step and not done.is_set():
            time.sleep(0.0005)
        s0, t0 = rt.stats()["decode_steps"], time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA if CUDA else ProfilerActivity.CPU]) as prof:
            while rt.stats()["decode_steps"] - s0 < window_steps and not done.is_set():
                time.sleep(0.0005)
            s1, t1 = rt.stats()["decode_steps"], time.perf_counter()
            _sync()
        th.join()
        _emit_profile(b, "step_profile", mode, prof, s1 - s0, (t1 - t0) * 1e3)


def _emit_profile(b: Bench, name: str, mode: str, prof, steps: int, wall_ms: float) -> None:
    """One row of GPU time per step (busy: the union of kernel spans; idle: the gaps of
    the traced span; by kernel class) and rows for the top kernels and the longest gaps."""
    kind = torch.autograd.DeviceType.CUDA if CUDA else torch.autograd.DeviceType.CPU
    kernels = [e for e in prof.events() if e.device_type == kind]
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    merged: list[list[float]] = []
    for st, en in spans:
        if merged and st <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], en)
        else:
            merged.append([st, en])
    busy = sum(en - st for st, en in merged)
    gaps = sorted((merged[i + 1][0] - merged[i][1] for i in range(len(merged) - 1)), reverse=True)
    span = merged[-1][1] - merged[0][0] if merged else 0.0
    per = max(steps, 1)
    by_class: dict[str, float] = {}
    by_name: dict[str, float] = {}
    for e in kernels:
        us = e.time_range.end - e.time_range.start
        by_class[_kernel_class(e.name)] = by_class.get(_kernel_class(e.name), 0.0) + us
        by_name[e.name] = by_name.get(e.name, 0.0) + us
    b.emit(name, mode=mode, steps=steps, window_ms=wall_ms, wall_ms_per_step=wall_ms / per,
           gpu_span_ms_per_step=span / 1e3 / per, gpu_busy_ms_per_step=busy / 1e3 / per,
           gpu_idle_ms_per_step=(span - busy) / 1e3 / per, kernels=len(kernels),
           kernels_per_step=len(kernels) / per,
           gaps_over_10us_per_step=sum(1 for g in gaps if g > 10) / per,
           idle_in_gaps_over_10us_ms_per_step=sum(g for g in gaps if g > 10) / 1e3 / per,
           **{f"{k}_ms_per_step": v / 1e3 / per for k, v in sorted(by_class.items())})
    for kname, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:12]:
        b.emit(f"{name}_kernel", mode=mode, ms_per_step=us / 1e3 / per,
               kernel=kname[:90].replace(" ", "_"))
    b.emit(f"{name}_gaps", mode=mode, longest_us="_".join(f"{g:.0f}" for g in gaps[:12]))


def latency_profile(b: Bench) -> None:
    """The batch-1 latency run (128-token prompt, 256 new tokens) traced with torch.profiler:
    GPU busy and idle time per token, where the GPU waits (gaps between kernels), by
    kernel class."""
    from torch.profiler import ProfilerActivity, profile

    for mode in b.modes:
        rt, new = b.runtime(mode), 32 if b.args.small else 256
        prompt = random_tokens(random.Random(0), 128, rt.model_config.vocab_size)
        rt.generate([prompt], max_new_tokens=new, temperature=0, ignore_eos=True)
        rt.flush_cache()
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CUDA if CUDA else ProfilerActivity.CPU]) as prof:
            rt.generate([prompt], max_new_tokens=new, temperature=0, ignore_eos=True)
            _sync()
        _emit_profile(b, "latency_profile", mode, prof, new, (time.perf_counter() - t0) * 1e3)


PARTS = {"kernels": kernels_part, "kv_kernels": kv_kernels, "accuracy": accuracy,
         "latency": latency, "decode_steps": decode_steps, "throughput": throughput,
         "step_profile": step_profile, "latency_profile": latency_profile}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llama3-8b")
    ap.add_argument("--only", default=",".join(PARTS))
    ap.add_argument("--modes", default="bf16,fp8,fp8kv")
    ap.add_argument("--fp8-decode", type=lambda v: tuple(x == "True" if x in ("True", "False") else int(x)
                                                         for x in v.split(",")),
                    default=None, help="FP8 decode kernel shape: f16,block_n,warps,stages[,words]")
    ap.add_argument("--decode-heads-first", type=int, choices=(0, 1), default=None,
                    help="the decode attention grid order (triton_kernels.DECODE_HEADS_FIRST)")
    ap.add_argument("--kv-gb", type=float, default=24.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/fp8_llama3-8b.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true",
                    help="a smoke run of the script: short workloads; with --device cpu the FP8 "
                         "model runs the kernels' torch references (FP8 support faked)")
    args = ap.parse_args()
    if args.device == "cpu":
        from lmnb.runtime.quant import fp8

        fp8.fp8_unsupported_reason = lambda device: None
    if args.decode_heads_first is not None:
        from lmnb.runtime.attention import triton_kernels as tk

        tk.DECODE_HEADS_FIRST = bool(args.decode_heads_first)
    if args.fp8_decode is not None:   # kv_kernels times only it; the parts after it use it
        from lmnb.runtime.attention import triton_kernels as tk

        tk.FP8_DECODE = args.fp8_decode
    b = Bench(args)
    b.fp8_decode = args.fp8_decode
    b.emit("setup", hbm_gbs=b.bw / 1e9)
    for name in args.only.split(","):
        t = time.perf_counter()
        try:
            PARTS[name](b)
        except Exception as e:  # noqa: BLE001 - one broken part must not hide the rest
            b.emit(f"{name}_error", error=repr(e)[:300].replace(" ", "_"))
        print(f"# {name} took {time.perf_counter() - t:.1f}s", flush=True)
        _write(b)
    print(f"wrote {_write(b)}")
    for rt in b.rts.values():
        rt.shutdown()


def _write(b: Bench) -> Path:
    chosen_configs = dict
    if CUDA:
        from lmnb.runtime.kernels.fp8_gemm import chosen_configs
    path = Path(b.args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"environment": environment(), "model": b.args.model,
                                "load_s": b.load_s, "fp8_decode": b.fp8_decode, "fp8_tiles": {k: list(v) for k, v in chosen_configs().items()},
                                "results": b.rows}, indent=2, default=str))
    return path


if __name__ == "__main__":
    main()
