"""Where the host time of grammar masks goes on the GPU (json_decode's workload): time
the bitmask computation, the upload and the device expansion separately, without syncs.
    python bench/debug/mask_parts.py [--model dummy:llama3-8b]"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
from gpu_suite import JSON_SCHEMA  # noqa: E402

import lmnb as lm  # noqa: E402
from lmnb.runtime import sampler  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llama3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--doc", type=int, default=3000)
    args = ap.parse_args()
    rt = lm.Runtime(args.model, device=args.device, kv_memory_gb=8 if args.device == "cuda" else None,
                    max_total_tokens=None if args.device == "cuda" else 60000)
    vocab = rt.model_config.vocab_size
    rng = random.Random(7)
    docs = [[rng.randrange(3, min(vocab, 259)) for _ in range(args.doc)] + [t + 3 for t in b"\nJSON: "]
            for _ in range(16)]
    kw = {"max_new_tokens": 256, "temperature": 0, "json_schema": json.dumps(JSON_SCHEMA)}
    rt.generate(docs, **kw)   # compile, cache the documents
    parts: dict[str, list[float]] = {"rows": [], "upload": [], "unpack": [], "apply": [],
                                     "accept": [], "jump": [], "settle": []}

    def wrap(name, fn):
        def timed(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            parts[name].append(time.perf_counter() - t)
            return out
        return timed

    orig = (sampler._bitmask_rows, sampler.DeviceMasks.upload, sampler._unpack_bits, sampler.apply_masks)
    sampler._bitmask_rows = wrap("rows", orig[0])
    sampler.DeviceMasks.upload = wrap("upload", orig[1])
    sampler._unpack_bits = wrap("unpack", orig[2])
    from lmnb.runtime import device_sampling
    from lmnb.runtime.constrained.llg import LlgCursor
    from lmnb.runtime.output import OutputProcessor
    device_sampling.apply_masks = wrap("apply", orig[3])
    LlgCursor.accept_token = wrap("accept", LlgCursor.accept_token)
    LlgCursor.jump_forward = wrap("jump", LlgCursor.jump_forward)
    OutputProcessor.settle = wrap("settle", OutputProcessor.settle)
    t0 = time.time()
    outs = rt.generate(docs, **kw)
    steps = [h for h in rt.engine.history if h[0] >= t0]
    for name, xs in parts.items():
        if not xs:
            continue
        print(f"{name}: n={len(xs)} mean {statistics.mean(xs) * 1e3:.3f} ms median "
              f"{statistics.median(xs) * 1e3:.3f} ms max {max(xs) * 1e3:.3f} ms")
    for mode in ("decode", "extend"):
        dts = [h[3] for h in steps if h[1] == mode]
        if dts:
            print(f"{mode} steps: {len(dts)} median {statistics.median(dts) * 1e3:.2f} ms")
    print("valid", sum(1 for o in outs if o["text"].startswith("{")), "of", len(outs),
          "counters", {k: v for k, v in rt.engine.counters.items() if "step" in k})
    rt.shutdown()


if __name__ == "__main__":
    main()
