"""The CPU benchmark workloads on smollm2, shared by cpu_generate.py and cpu_ab.py (no lmnb
import here: cpu_ab.py runs them against another checkout's lmnb).

(a) batch 1: a PROMPT_A-token prompt, NEW_A new tokens
(b) N_B prompts sharing a PREFIX_B-token prefix (plus SUFFIX_B tokens each), NEW_B new each
"""
from __future__ import annotations

import random

PROMPT_A, NEW_A = 126, 128
PREFIX_B, SUFFIX_B, N_B, NEW_B = 400, 16, 32, 32


def workloads(vocab: int, seed: int = 0):
    rng = random.Random(seed)
    tok = lambda n: [rng.randrange(100, vocab - 100) for _ in range(n)]  # noqa: E731
    single = tok(PROMPT_A)
    prefix = tok(PREFIX_B)
    shared = [prefix + tok(SUFFIX_B) for _ in range(N_B)]
    return single, shared


def mode_options(mode: str) -> dict:
    """fp32 / bf16: unquantized weights in that dtype; q8 / q4: the quantized CPU modes."""
    if mode in ("fp32", "bf16"):
        return {"dtype": {"fp32": "float32", "bf16": "bfloat16"}[mode]}
    return {"quantization": mode}


def run_lmnb(rt, prompts, new, cache: bool = False, drafts: bool = False):
    """Plain decoding unless `drafts` (the runtime's default speculative="auto", which on
    a repetitive greedy continuation accepts many drafted tokens per step)."""
    if not cache:
        rt.flush_cache()
    return rt.generate(prompts, max_new_tokens=new, temperature=0, ignore_eos=True,
                       speculative=None if drafts else False)
