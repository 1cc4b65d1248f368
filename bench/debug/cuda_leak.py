"""Which CUDA tensors outlive a shut-down runtime, and who holds them (debug aid)."""
import gc
import sys

import torch

import lmnb as lm


def holders(obj, depth=3, seen=None):
    seen = seen or {id(obj)}
    out = []
    for r in gc.get_referrers(obj):
        if id(r) in seen or r is sys._getframe():
            continue
        seen.add(id(r))
        desc = type(r).__name__
        if isinstance(r, dict):
            desc += "{" + ",".join(map(str, list(r)[:6])) + "}"
        out.append(desc)
        if depth > 1 and not isinstance(r, type(sys)):
            out += ["  " + h for h in holders(r, depth - 1, seen)[:6]]
    return out


torch.cuda.synchronize()
base = torch.cuda.memory_allocated()
rt = lm.Runtime(sys.argv[1] if len(sys.argv) > 1 else "dummy:qwen3-0.6b", device="cuda", kv_memory_gb=1)
rt.generate(["Hello there"] * 4, max_new_tokens=16, temperature=0, ignore_eos=True)
rt.shutdown()
del rt
gc.collect()
torch.cuda.synchronize()
print("left MiB", (torch.cuda.memory_allocated() - base) / 2**20)
live = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.is_cuda]
live.sort(key=lambda t: -t.numel() * t.element_size())
for t in live[:8]:
    print(tuple(t.shape), t.dtype, t.numel() * t.element_size() / 2**20, "MiB")
    for h in holders(t)[:12]:
        print("   ", h)
