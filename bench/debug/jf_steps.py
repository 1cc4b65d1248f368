"""Where a jump-forward JSON program's time goes on the GPU (the suite's json_decode
workload): per mode (jump-forward with mixed steps, without them, no jump-forward) the
wall time, the engine's step counts, the summed step times by kind, and the engine
thread's host time in scheduling, launching, sampling and settling.

    python bench/debug/jf_steps.py [--model dummy:llama3-8b] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))   # this checkout's lmnb
from gpu_helpers import (byte_tokenizer_shim, random_tokens, timed, without_jump_forward,
                         without_mixed_steps)
from gpu_suite import JSON_SCHEMA

import lmnb as lm


PROFILES: dict = {}


def _wrap(owner, name: str, spent: dict) -> None:
    fn = getattr(owner, name)

    def timed_call(*a, **k):
        prof = PROFILES.get(name)
        t = time.perf_counter()
        if prof is not None:
            prof.enable()
        try:
            return fn(*a, **k)
        finally:
            if prof is not None:
                prof.disable()
            spent[name] += time.perf_counter() - t
    setattr(owner, name, timed_call)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:llama3-8b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--doc-tokens", type=int, default=3000)
    ap.add_argument("--profile", action="store_true", help="cProfile the engine's host calls")
    args = ap.parse_args()
    byte_tokenizer_shim()
    rt = lm.Runtime(args.model, device=args.device, kv_memory_gb=24 if args.device == "cuda" else 1, context_length=8192)
    rng = random.Random(7)
    vocab = rt.model_config.vocab_size
    docs = [random_tokens(rng, args.doc_tokens, vocab) + [t + 3 for t in b"\nJSON: "] for _ in range(16)]
    kw = {"max_new_tokens": 256, "temperature": 0, "json_schema": json.dumps(JSON_SCHEMA)}
    spent: dict = defaultdict(float)
    eng = rt.engine
    rt.engine.call(lambda: [_wrap(eng.sched, "next_batch", spent), _wrap(eng.runner, "run", spent),
                            _wrap(eng.sampler, "sample", spent), _wrap(eng.outputs, "settle", spent),
                            _wrap(eng.sched, "cache_progress", spent), _wrap(eng, "_step", spent)])
    rt.generate(docs, **kw)   # grammar compiled, documents cached

    def measure(label: str) -> None:
        rows = []
        for _ in range(args.repeats):
            c0, t0 = dict(eng.counters), time.time()
            spent.clear()
            wall = timed(lambda: rt.generate(docs, **kw))
            hist = [h for h in list(eng.history) if h[0] >= t0]
            by_mode = defaultdict(float)
            for h in hist:
                by_mode[h[1]] += h[3]
            c = {k: eng.counters[k] - c0[k] for k in ("forward_steps", "extend_steps", "decode_steps",
                                                     "mixed_steps")}
            rows.append({"wall_s": wall, **c, **{f"{m}_s": v for m, v in by_mode.items()},
                         **{f"host_{k}_s": v for k, v in spent.items()}})
        med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in rows[0]}
        print(label, " ".join(f"{k}={v:.4g}" for k, v in med.items()), flush=True)

    if args.profile:
        import cProfile
        import pstats

        PROFILES.update(_step=cProfile.Profile())
        measure("jf_mixed_profiled")
        for name, prof in PROFILES.items():
            print(f"--- {name}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(28)
        PROFILES.clear()
    measure("jf_mixed")
    with without_mixed_steps(rt):
        measure("jf_unmixed")
    with without_jump_forward(rt):
        measure("no_jf")


if __name__ == "__main__":
    main()
