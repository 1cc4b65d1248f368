"""`select` on `lm.OpenAI`: scoring from prompt logprobs, or generating and matching.

Completion endpoints echo the prompt with its token logprobs (`echo=True, logprobs=1,
max_tokens=0`): every option is sent as prompt + option in one request, and an option's
tokens are those ending past the prompt (by `text_offset`). The three methods are the
local runtime's (choices.py). Chat endpoints return no prompt logprobs, so the model
answers and the answer is matched to an option (constrained by a regex where the server
takes one); `meta["method"]` says which way was used.
"""
from __future__ import annotations

import math
import re

from lmnb.errors import LmnbError
from lmnb.lang.backend import SelectResult
from lmnb.lang.choices import greedy_token, unconditional_normalized
from lmnb.lang.openai_requests import ApiCall, build_request, send


def select_by_logprobs(backend, prompt: str, choices: list[str], method: str, counters: list) -> SelectResult:
    prompts = [prompt + c for c in choices]
    uncond = method == "unconditional_likelihood_normalized"
    if uncond:
        prompts += choices
    resp = send(backend, False, model=backend.model, prompt=prompts, echo=True, logprobs=1,
                max_tokens=0, temperature=0)
    usage = resp.usage
    backend.add_usage(counters, calls=1, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                      completion_tokens=getattr(usage, "completion_tokens", 0) or 0)
    rows = sorted(resp.choices, key=lambda c: c.index)
    if len(rows) != len(prompts) or any(r.logprobs is None or not r.logprobs.text_offset for r in rows):
        raise LmnbError(f"{backend.endpoint()} returned no prompt logprobs for echo=True; select needs "
                        "them on a completion model (or use a chat model, which generates and matches)")
    cond = [_option_logprobs(r.logprobs, len(prompt)) for r in rows[: len(choices)]]
    normalized = [sum(x) / len(x) if x else -math.inf for x in cond]
    if method == "greedy_token":
        best = greedy_token(cond)
    elif uncond:
        alone = [[lp for lp in r.logprobs.token_logprobs[1:] if lp is not None] for r in rows[len(choices):]]
        scores = unconditional_normalized(cond, alone)
        best = max(range(len(choices)), key=scores.__getitem__)
    else:
        best = max(range(len(choices)), key=normalized.__getitem__)
    meta = {"normalized_prompt_logprobs": normalized, "input_token_logprobs": cond, "method": method,
            "api_calls": 1}
    return SelectResult(best, choices[best], meta)


def _option_logprobs(lp, prompt_len: int) -> list[float]:
    """Logprobs of the tokens that end past the prompt (the option's tokens)."""
    out = []
    for tok, off, val in zip(lp.tokens, lp.text_offset, lp.token_logprobs):
        if off + len(tok) > prompt_len and val is not None:
            out.append(val)
    return out


def select_by_generation(backend, prompt: str, choices: list[str], counters: list) -> SelectResult:
    sampling = {"max_new_tokens": max(len(c) for c in choices) + 8, "temperature": 0}
    if backend.server_extras:
        sampling["regex"] = "(" + "|".join(re.escape(c) for c in choices) + ")"
    req = build_request(backend, prompt, sampling, mode="best_effort")
    res = ApiCall(backend, req, False, counters).result()
    best = match_choice(res["text"], choices)
    if best is None:
        raise LmnbError(f"the model answered {res['text'][:60]!r}, which names none of the options "
                        f"{choices}; chat APIs give no logprobs to score them (use a completion model)")
    meta = {**res["meta"], "method": "generate_match", "reply": res["text"]}
    return SelectResult(best, choices[best], meta)


def match_choice(reply: str, choices: list[str]) -> int | None:
    """The option the reply is, starts with, or shares the longest prefix with
    (case-insensitive, outer spaces ignored); None when it shares nothing."""
    r = reply.strip().lower()
    opts = [c.strip().lower() for c in choices]
    exact = [i for i, c in enumerate(opts) if c == r]
    if exact:
        return exact[0]
    starts = [i for i, c in enumerate(opts) if c and r.startswith(c)]
    if starts:
        return max(starts, key=lambda i: len(opts[i]))
    common = [_common(r, c) for c in opts]
    best = max(range(len(choices)), key=common.__getitem__)
    return best if common[best] > 0 else None


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
