"""Before/after on the CPU: the same smollm2 workload from two checkouts of lmnb, each in a
fresh process, alternating, so a drifting machine hits both sides alike.

    python bench/cpu_ab.py OLD_CHECKOUT NEW_CHECKOUT [--modes q4,fp32] [--rounds 3]

(a) batch 1: 126-token prompt, 128 new tokens, tok/s end to end
(b) 32 prompts sharing a 400-token prefix, 32 new each, tok/s
Plain decoding (speculative=False), greedy, medians of 3 per process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, random, statistics, sys, time
import lmnb as lm
mode, case = sys.argv[1], sys.argv[2]
opts = {"q4": {}, "q8": {"quantization": "q8"}, "fp32": {"dtype": "float32"}}[mode]
rt = lm.Runtime("smollm2", device="cpu", kv_memory_gb=0.25, **opts)
rng = random.Random(0)
tok = lambda n: [rng.randrange(100, 49000) for _ in range(n)]
if case == "a":
    prompts, new = [tok(126)], 128
else:
    prefix = tok(400)
    prompts, new = [prefix + tok(16) for _ in range(32)], 32
rt.generate(prompts[:1], max_new_tokens=4, temperature=0, ignore_eos=True, speculative=False)
ts = []
for _ in range(3):
    rt.flush_cache()
    t = time.perf_counter()
    rt.generate(prompts, max_new_tokens=new, temperature=0, ignore_eos=True, speculative=False)
    ts.append(time.perf_counter() - t)
print(json.dumps({"tok_s": len(prompts) * new / statistics.median(ts), "load1": os.getloadavg()[0]}))
rt.shutdown()
"""


def run(checkout: str, mode: str, case: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    r = subprocess.run([sys.executable, "-c", CHILD, mode, case], env=env, capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"{checkout} {mode} {case} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--modes", default="q4,fp32")
    ap.add_argument("--cases", default="a,b")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for rnd in range(args.rounds):
        for case in args.cases.split(","):
            for mode in args.modes.split(","):
                for side, path in (("before", args.old), ("after", args.new)):
                    got = run(path, mode, case)
                    print(f"cpu_ab round={rnd} case={case} mode={mode} {side} "
                          f"tok_s={got['tok_s']:.1f} load1={got['load1']:.2f}", flush=True)


if __name__ == "__main__":
    main()
