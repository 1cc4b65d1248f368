"""lmnb vs HF transformers on smollm2, CPU, side by side in one run.

(a) batch 1: 128-token prompt, 128 new tokens        -> decode tok/s
(b) 32 prompts sharing a 400-token prefix, 32 new each -> output tok/s (end to end)
Usage: python bench/cpu_generate.py [--dtype float32|bfloat16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import emit, hf_model_for, median_time, save  # noqa: E402

import lmnb as lm  # noqa: E402


def workloads(vocab: int, seed: int = 0):
    rng = random.Random(seed)
    tok = lambda n: [rng.randrange(100, vocab - 100) for _ in range(n)]  # noqa: E731
    single = tok(128)
    prefix = tok(400)
    shared = [prefix + tok(16) for _ in range(32)]
    return single, shared


def run_lmnb(rt, prompts, new, cache: bool):
    if not cache:
        rt.flush_cache()
    return rt.generate(prompts, max_new_tokens=new, temperature=0, ignore_eos=True)


def run_hf(model, prompts, new):
    x = torch.tensor(prompts)
    with torch.no_grad():
        return model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rt = lm.Runtime("smollm2", device="cpu", dtype=args.dtype)
    hf = hf_model_for(rt)
    single, shared = workloads(rt.model_config.vocab_size)
    rows = []
    t_l = median_time(lambda: run_lmnb(rt, [single], 128, cache=False), args.repeats)
    t_h = median_time(lambda: run_hf(hf, [single], 128), args.repeats)
    rows.append(emit("cpu_generate case=a_batch1", dtype=args.dtype, lmnb_tok_s=128 / t_l,
                     hf_tok_s=128 / t_h, speedup=t_h / t_l))
    n_out = 32 * 32
    # lmnb: cold cache each repeat, so the shared prefix is computed once per run
    t_l = median_time(lambda: run_lmnb(rt, shared, 32, cache=False), args.repeats)
    t_nc = median_time(lambda: run_lmnb(rt_nocache, shared, 32, cache=False), args.repeats) \
        if (rt_nocache := lm.Runtime("smollm2", device="cpu", dtype=args.dtype,
                                     enable_radix_cache=False)) else 0
    rt_nocache.shutdown()
    t_h = median_time(lambda: run_hf(hf, shared, 32), args.repeats)
    rows.append(emit("cpu_generate case=b_shared_prefix", dtype=args.dtype, lmnb_tok_s=n_out / t_l,
                     lmnb_nocache_tok_s=n_out / t_nc, hf_tok_s=n_out / t_h, speedup=t_h / t_l))
    out = save(f"cpu_generate_{args.dtype}.json", rows, model="smollm2", device="cpu")
    print(f"wrote {out}")
    rt.shutdown()


if __name__ == "__main__":
    main()
