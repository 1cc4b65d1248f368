"""FP8 decode attention kernel shapes over the cases a throughput step and a batch-1 step
meet (llama3-8b heads: 32 query / 8 KV, D = 128; slots laid out as decode steps allocate
them, see decode_grid.slot_table), heads-first grid, splits as the runtime picks them.
Each shape's output is checked against the bf16 kernel's on the same values; the best
shape (sum of times relative to bf16 over the cases, error within bounds) is written to
--best as `f16,block_n,warps,stages,words` for fp8_bench's --fp8-decode.

    python bench/debug/fp8_decode_shapes.py --out FILE --best FILE [--shapes "T_64_2_3_T;..."]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402
from decode_grid import slot_table  # noqa: E402
from fp8_bench import _graph_time  # noqa: E402
from gpu_helpers import hbm_bandwidth_gbs  # noqa: E402

from lmnb.runtime.attention import triton_kernels as tk  # noqa: E402
from lmnb.runtime.kv_dtype import FP8_KV, quantize_ref  # noqa: E402
from lmnb.runtime.memory import KVPool  # noqa: E402

H, KVH, D = 32, 8, 128
# every shape the offline register count (offline_regs.py) gives >= 12 warps per SM, the
# default and the best of the previous sweep
DEFAULT_SHAPES = [
    (True, 64, 2, 3, True), (False, 128, 4, 3, True),
    (False, 32, 4, 2, True), (False, 32, 4, 3, True), (False, 32, 8, 1, True),
    (False, 32, 8, 2, True), (False, 64, 4, 2, True), (False, 64, 4, 3, True),
    (False, 64, 8, 1, True), (False, 64, 8, 2, True), (False, 64, 8, 3, True),
    (False, 128, 8, 1, True), (False, 128, 8, 2, True), (True, 32, 4, 2, True),
    (True, 32, 4, 3, True), (True, 32, 8, 1, True), (True, 64, 8, 1, True),
    (True, 64, 8, 3, True), (True, 128, 8, 1, True), (True, 64, 4, 3, True),
]


def parse_shape(text: str) -> tuple:
    f16, bn, w, st, words = text.replace(",", "_").split("_")
    return (f16 in ("True", "T", "1"), int(bn), int(w), int(st), words in ("True", "T", "1"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--best", default=None)
    ap.add_argument("--shapes", default=None)
    args = ap.parse_args()
    shapes = [parse_shape(s) for s in args.shapes.split(";")] if args.shapes else DEFAULT_SHAPES
    bw = hbm_bandwidth_gbs() * 1e9
    rng = random.Random(0)
    g = torch.Generator(device="cuda").manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cases = [("mixed256", [rng.randint(200, 2048) for _ in range(256)]), ("uniform256x800", [800] * 256),
             ("uniform64x1024", [1024] * 64), ("single4096", [4096])]
    rows, rel, worst = [], {s: 0.0 for s in shapes}, {s: 0.0 for s in shapes}
    for name, lens in cases:
        bs, total, width = len(lens), sum(lens), max(lens)
        kv = [torch.randn(total + 1, KVH, D, device="cuda", generator=g).mul_(0.05).to(torch.bfloat16)
              for _ in range(2)]
        (k8, ks), (v8, vs) = quantize_ref(kv[0]), quantize_ref(kv[1])
        table = slot_table(lens, "decode", rng, width).cuda()
        req = torch.arange(bs, device="cuda")
        seq = torch.tensor(lens, device="cuda", dtype=torch.int32)
        q = torch.randn(bs, H, D, device="cuda", generator=g).to(torch.bfloat16)
        splits = tk.decode_num_splits(bs, KVH, width, sms)
        mid = tk.decode_buffers(bs, H, splits, D, q.device)
        o = torch.empty_like(q)
        t16 = _graph_time(lambda: tk.decode_attention(q, kv[0], kv[1], o, table, req, seq, D ** -0.5,
                                                      splits, *mid))
        ref = o.float().clone()
        n16 = total * KVPool.bytes_per_token(1, KVH, D, torch.bfloat16)
        n8 = total * KVPool.bytes_per_token(1, KVH, D, FP8_KV)
        rows.append(dict(case=name, kv="bf16", splits=splits, us=t16 * 1e6, of_hbm=n16 / t16 / bw))
        print(rows[-1], flush=True)
        for s in shapes:
            try:
                t = _graph_time(lambda s=s: tk.decode_attention(
                    q, k8, v8, o, table, req, seq, D ** -0.5, splits, *mid, k_scale=ks, v_scale=vs,
                    fp8_config=s))
            except Exception as e:  # noqa: BLE001  (a shape that does not compile or fit)
                print(f"{name} {s}: {type(e).__name__}: {str(e)[:120]}", flush=True)
                rel[s] = float("inf")
                continue
            err = ((o.float() - ref).norm() / ref.norm()).item()
            rel[s] += t / t16
            worst[s] = max(worst[s], err)
            rows.append(dict(case=name, kv="fp8", shape="_".join(map(str, s)), splits=splits,
                             us=t * 1e6, of_hbm=n8 / t / bw, vs_bf16=t16 / t, rel_err=err))
            print(rows[-1], flush=True)
        del kv, k8, v8, ks, vs
        torch.cuda.empty_cache()
    ok = [s for s in shapes if worst[s] <= 1.5 * worst[shapes[0]] + 2e-3 and rel[s] < float("inf")]
    ranked = sorted(ok, key=rel.get)
    for s in ranked:
        print(f"shape {'_'.join(map(str, s))}: mean time of bf16 {rel[s] / len(cases):.3f} "
              f"worst rel err {worst[s]:.2e}", flush=True)
    best = ranked[0]
    if args.best:
        Path(args.best).write_text(",".join(map(str, best)))
    if args.out:
        Path(args.out).write_text(json.dumps({"environment": environment(), "rows": rows,
                                              "mean_time_of_bf16": {"_".join(map(str, s)): rel[s] / len(cases)
                                                                    for s in shapes},
                                              "best": "_".join(map(str, best))}, indent=2, default=str))


if __name__ == "__main__":
    main()
