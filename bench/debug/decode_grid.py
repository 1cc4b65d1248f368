"""The decode attention kernel's grid order, (requests, KV heads, splits) against (KV heads,
requests, splits), over bf16 and FP8 pools, llama3-8b's heads (32 query / 8 KV, D = 128).

Slots are laid out two ways: `random` (a permutation of the pool) and `decode` (each
request's prompt in one run of slots, then one slot per request per decode step, handed
out round-robin, as the throughput workload's steps allocate them). Each case is timed
over CUDA-graph replays (`fp8_bench._graph_time`); the two orders must give bit-identical
outputs (same arithmetic, other launch order). GB/s counts the K/V bytes the step reads.

    python bench/debug/decode_grid.py [--out FILE]
    ncu --clock-control none -k regex:_decode_split python bench/debug/decode_grid.py --ncu
(--ncu: the 256 mixed-length requests over `decode` slots only, each kernel called
eagerly once per pool and order, for a profiler.)
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import environment  # noqa: E402
from fp8_bench import FP8_DECODE_SWEEP, _graph_time  # noqa: E402
from gpu_helpers import hbm_bandwidth_gbs  # noqa: E402

from lmnb.runtime.attention import triton_kernels as tk  # noqa: E402
from lmnb.runtime.kv_dtype import FP8_KV, quantize_ref  # noqa: E402
from lmnb.runtime.memory import KVPool  # noqa: E402

H, KVH, D = 32, 8, 128


def slot_table(lens: list[int], layout: str, rng: random.Random, width: int) -> torch.Tensor:
    """req_to_token rows [bs, width] (slot 0 stays the pool's padding slot)."""
    bs, total = len(lens), sum(lens)
    table = torch.zeros(bs, width, dtype=torch.int32)
    if layout == "random":
        perm = torch.randperm(total, generator=torch.Generator().manual_seed(rng.randrange(1 << 30))) + 1
        at = 0
        for i, n in enumerate(lens):
            table[i, :n] = perm[at:at + n]
            at += n
        return table
    prompts = [min(n, rng.randint(100, 1024)) for n in lens]
    nxt = 1
    for i, p in enumerate(prompts):
        table[i, :p] = torch.arange(nxt, nxt + p)
        nxt += p
    filled = list(prompts)
    for _ in range(max(n - p for n, p in zip(lens, prompts))):
        for i, n in enumerate(lens):
            if filled[i] < n:
                table[i, filled[i]] = nxt
                nxt += 1
                filled[i] += 1
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--ncu", action="store_true", help="one eager call per pool and order")
    args = ap.parse_args()
    bw = hbm_bandwidth_gbs() * 1e9
    rng = random.Random(0)
    g = torch.Generator(device="cuda").manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    cases = [("uniform", [800] * 256, "random"), ("uniform", [800] * 256, "decode"),
             ("mixed", [rng.randint(200, 2048) for _ in range(256)], "decode"),
             ("mixed", [rng.randint(200, 2048) for _ in range(256)], "random"),
             ("uniform", [1024] * 64, "decode"), ("uniform", [4096], "decode")]
    if args.ncu:
        cases = cases[2:3]
    for lens_name, lens, layout in cases:
        bs, total, width = len(lens), sum(lens), max(lens)
        kv = [torch.randn(total + 1, KVH, D, device="cuda", generator=g).mul_(0.05).to(torch.bfloat16)
              for _ in range(2)]
        (k8, ks), (v8, vs) = quantize_ref(kv[0]), quantize_ref(kv[1])
        table = slot_table(lens, layout, rng, width).cuda()
        req = torch.arange(bs, device="cuda")
        seq = torch.tensor(lens, device="cuda", dtype=torch.int32)
        q = torch.randn(bs, H, D, device="cuda", generator=g).to(torch.bfloat16)
        base = tk.decode_num_splits(bs, KVH, width, sms)
        splits_list = sorted({base, 2, 4} if bs >= 256 and not args.ncu else {base})
        for kv_name in ("bf16", "fp8"):
            nbytes = total * KVPool.bytes_per_token(1, KVH, D, torch.bfloat16 if kv_name == "bf16" else FP8_KV)
            configs = [None] if kv_name == "bf16" else [tk.FP8_DECODE] + (
                [c for c in FP8_DECODE_SWEEP if c != tk.FP8_DECODE] if lens_name == "mixed" and layout == "decode" else [])
            for cfg in configs[:1] if args.ncu else configs:
                for splits in splits_list:
                    mid = tk.decode_buffers(bs, H, splits, D, q.device)
                    outs = {}
                    for hf in (False, True):
                        o = torch.empty_like(q)
                        if kv_name == "bf16":
                            fn = lambda o=o, hf=hf: tk.decode_attention(
                                q, kv[0], kv[1], o, table, req, seq, D ** -0.5, splits, *mid, heads_first=hf)
                        else:
                            fn = lambda o=o, hf=hf: tk.decode_attention(
                                q, k8, v8, o, table, req, seq, D ** -0.5, splits, *mid, k_scale=ks,
                                v_scale=vs, fp8_config=cfg, heads_first=hf)
                        if args.ncu:
                            fn()
                            torch.cuda.synchronize()
                            continue
                        t = _graph_time(fn)
                        outs[hf] = o
                        row = dict(lens=lens_name, layout=layout, bs=bs, ctx_mean=total / bs, kv=kv_name,
                                   config="_".join(map(str, cfg)) if cfg else "-", splits=splits,
                                   heads_first=hf, us=t * 1e6, gbs=nbytes / t / 1e9, of_hbm=nbytes / t / bw)
                        rows.append(row)
                        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row.items()), flush=True)
                    if args.ncu:
                        continue
                    same = torch.equal(outs[False], outs[True])
                    rows[-1]["identical_to_other_order"] = same
                    if not same:
                        print(f"MISMATCH between grid orders: {lens_name} {layout} {kv_name} {cfg} {splits}")
        del kv, k8, v8, ks, vs
        torch.cuda.empty_cache()
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": environment(), "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
