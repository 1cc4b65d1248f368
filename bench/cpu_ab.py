"""Before/after on the CPU: the same smollm2 workload from two checkouts of lmnb, each in a
fresh process, alternating, so a drifting machine hits both sides alike.

    python bench/cpu_ab.py OLD_CHECKOUT NEW_CHECKOUT [--modes q4,fp32] [--rounds 3]

The workloads are cpu_generate.py's cases (a) and (b) (cpu_workloads.py), plain decoding
(speculative=False), greedy, medians of 3 per process after a warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent

CHILD = r"""
import json, os, sys
sys.path.insert(0, os.environ["PYTHONPATH"])   # the checkout, before the cwd that -c puts first
import lmnb as lm
sys.path.append(sys.argv[3])   # this bench directory; lmnb itself comes from PYTHONPATH
from common import median_time
from cpu_workloads import NEW_A, NEW_B, mode_options, run_lmnb, workloads
mode, case = sys.argv[1], sys.argv[2]
rt = lm.Runtime("smollm2", device="cpu", kv_memory_gb=0.25, **mode_options(mode))
single, shared = workloads(rt.model_config.vocab_size)
prompts, new = ([single], NEW_A) if case == "a" else (shared, NEW_B)
t = median_time(lambda: run_lmnb(rt, prompts, new), 3)
print(json.dumps({"tok_s": len(prompts) * new / t, "load1": os.getloadavg()[0], "lmnb": lm.__file__}))
rt.shutdown()
"""


def run(checkout: str, mode: str, case: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    r = subprocess.run([sys.executable, "-c", CHILD, mode, case, str(BENCH)], env=env,
                       capture_output=True, text=True, timeout=900, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{checkout} {mode} {case} failed:\n{r.stderr[-2000:]}")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    if not got["lmnb"].startswith(os.path.abspath(checkout) + os.sep):
        raise SystemExit(f"the child imported {got['lmnb']}, not the checkout {checkout}")
    return got


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
