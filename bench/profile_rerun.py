"""Profile a cached cell re-run with its last tokens edited (torch.profiler, CUDA + CPU):
where the time of an extend over a long cached prefix goes.

    python bench/profile_rerun.py --model dummy:qwen3-0.6b [--prefix 4072 --new 24]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_helpers import random_tokens

import lmnb as lm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:qwen3-0.6b")
    ap.add_argument("--prefix", type=int, default=4072)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args()
    rt = lm.Runtime(args.model, device="cuda", kv_memory_gb=8, context_length=8192)
    rng = random.Random(0)
    cell = random_tokens(rng, args.prefix, rt.model_config.vocab_size)
    vocab = rt.model_config.vocab_size
    rt.generate([cell + random_tokens(rng, args.new, vocab)], max_new_tokens=1)
    for _ in range(3):
        p = cell + random_tokens(rng, args.new, vocab)
        t = time.perf_counter()
        m = rt.generate([p], max_new_tokens=1)[0]["meta"]
        print(f"edited ttft {m['ttft'] * 1e3:.2f} ms wall {(time.perf_counter() - t) * 1e3:.2f} ms "
              f"cached {m['cached_tokens']}", flush=True)
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        rt.generate([cell + random_tokens(rng, args.new, vocab)], max_new_tokens=1)
    ka = prof.key_averages()
    print(ka.table(sort_by="cuda_time_total", row_limit=args.rows))
    print(ka.table(sort_by="cpu_time_total", row_limit=args.rows))
    rt.shutdown()


if __name__ == "__main__":
    main()
