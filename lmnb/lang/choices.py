"""`select` on the local runtime: score every option from prompt-token logprobs.

Each option is sent as prefix + option with `max_new_tokens=0` and `logprob_start_len`
at the first token of the option, all at once, so the engine batches them and the radix
cache computes the shared prefix a single time: the shared part is cached first by a zero-token request (as
SGLang does), since the runtime shares a request's KV only once it has finished.

Tokenization at the boundary: prefix + option is encoded as one text (what the model
would see) and the option starts at the first token where it differs from the encoded
prefix; one start is used for all options so they are scored over the same span.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from lmnb.runtime.results import SelectResult


def score_choices(rt, prompt: str, choices: Sequence[str], method: str) -> SelectResult:
    prefix_ids = rt.encode(prompt) if prompt else []
    full = [rt.encode(prompt + c) for c in choices]
    start = min(_common_len(prefix_ids, f) for f in full)
    warm = 0
    if start > 1:  # cache the shared part first, so every option reads it from the cache
        warm = rt.submit(full[0][:start], max_new_tokens=0).result()["meta"]["computed_tokens"]
    handles = [rt.submit(f, max_new_tokens=0, logprob_start_len=start) for f in full]
    uncond = None
    if method == "unconditional_likelihood_normalized":
        handles += [rt.submit(f[start:], max_new_tokens=0, logprob_start_len=0) for f in full]
    try:
        results = [h.result() for h in handles]
    except BaseException:
        for h in handles:
            h.abort()
        raise
    cond = [r["meta"]["input_token_logprobs"] for r in results[: len(choices)]]
    if method == "unconditional_likelihood_normalized":
        uncond = [r["meta"]["input_token_logprobs"] for r in results[len(choices):]]
    lps = [[lp for _, lp in c] for c in cond]
    normalized = [sum(x) / len(x) if x else -math.inf for x in lps]
    if method == "greedy_token":
        best = greedy_token(lps)
    elif method == "unconditional_likelihood_normalized":
        scores = unconditional_normalized(lps, [[lp for _, lp in u] for u in uncond])
        best = max(range(len(choices)), key=scores.__getitem__)
    else:
        best = max(range(len(choices)), key=normalized.__getitem__)
    metas = [r["meta"] for r in results]
    meta = {
        "normalized_prompt_logprobs": normalized,
        "input_token_logprobs": cond,
        "unconditional_token_logprobs": uncond,
        "option_start": start,
        "prompt_tokens": len(prefix_ids),
        "cached_tokens": [m["cached_tokens"] for m in metas],
        "computed_tokens": warm + sum(m["computed_tokens"] for m in metas),
        "method": method,
    }
    return SelectResult(best, choices[best], meta)


def greedy_token(lps: list[list[float]]) -> int:
    """Keep the options with the best logprob at each token position in turn (an option
    that ran out of tokens is padded with its mean), until one is left."""
    width = max(len(x) for x in lps)
    rows = [x + [sum(x) / len(x) if x else -math.inf] * (width - len(x)) for x in lps]
    alive = list(range(len(lps)))
    for j in range(width):
        top = max(rows[i][j] for i in alive)
        alive = [i for i in alive if rows[i][j] == top]
        if len(alive) == 1:
            break
    return alive[0]


def unconditional_normalized(cond: list[list[float]], uncond: list[list[float]]) -> list[float]:
    """Mean over the option tokens of log p(token | prefix) - log p(token | option alone);
    the first token has no unconditional logprob (nothing precedes it) and keeps its own."""
    out = []
    for c, u in zip(cond, uncond):
        adj = [c[0]] + [a - b for a, b in zip(c[1:], u)] if c else []
        out.append(sum(adj) / len(adj) if adj else -math.inf)
    return out


def _common_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return min(n, len(b) - 1) if b else 0
