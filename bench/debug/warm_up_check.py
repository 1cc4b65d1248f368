"""Whether a serving run still compiles Triton kernels after the runtime's warm-up: a
runtime answers 8 short requests (graph capture, which runs the attention backend's
warm_up), then 64 requests with 300-900-token prompts arrive at once; every Triton compile
in that burst is printed (fp8_bench's compile log).

    python bench/debug/warm_up_check.py [--model dummy:qwen3-0.6b]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fp8_bench import _compile_log, _warm  # noqa: E402
from gpu_helpers import random_tokens, submit_all  # noqa: E402

import lmnb as lm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dummy:qwen3-0.6b")
    args = ap.parse_args()
    rt = lm.Runtime(args.model, device="cuda", kv_memory_gb=8, context_length=4096, speculative="off")
    _warm(rt)
    rng = random.Random(0)
    prompts = [random_tokens(rng, rng.randint(300, 900), rt.model_config.vocab_size) for _ in range(64)]
    with _compile_log() as compiles:
        t = time.perf_counter()
        submit_all(rt, prompts, [{"max_new_tokens": 16, "temperature": 0, "ignore_eos": True}] * 64)
        t = time.perf_counter() - t
    print(f"warm_up_check model={args.model} burst_s={t:.2f} compiles={len(compiles)} "
          f"compile_s={sum(c[1] for c in compiles):.2f} compiled={'+'.join(sorted({c[0] for c in compiles})) or 'none'}")
    rt.shutdown()


if __name__ == "__main__":
    main()
