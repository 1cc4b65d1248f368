"""Leftover CUDA memory after shutdown, per runtime option (debug aid)."""
import gc
import sys

import torch

import lmnb as lm

for opts in ({"cuda_graph": False, "overlap": False}, {"cuda_graph": False}, {"overlap": False}, {}):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    rt = lm.Runtime("dummy:qwen3-0.6b", device="cuda", kv_memory_gb=1, **opts)
    rt.generate(["Hello there"] * 4, max_new_tokens=16, temperature=0, ignore_eos=True)
    rt.shutdown()
    del rt
    gc.collect()
    torch.cuda.synchronize()
    left = (torch.cuda.memory_allocated() - base) / 2**20
    snap = [s for s in torch.cuda.memory_snapshot() if s["allocated_size"] > 0]
    print(opts, "left MiB", left, [(s["segment_pool_id"], s["allocated_size"] >> 20) for s in snap][:6], flush=True)
