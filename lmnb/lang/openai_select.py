"""`select` on `lm.OpenAI`: scoring from prompt logprobs, or generating and matching.

Completion endpoints echo the prompt with its token logprobs (`echo=True, logprobs=1,
max_tokens=0`): every option is sent as prompt + option in one request, and an option's
tokens are those ending past the prompt (by `text_offset`). The three methods are the
local runtime's (choices.py). Chat endpoints return no prompt logprobs, so the model
answers and the answer is matched to an option (constrained by a regex where the server
takes one); `meta["method"]` says which way was used.

Servers that refuse that echo form (llama.cpp's answers 500 and drops the connection;
others want max_tokens >= 1 or return no prompt logprobs) are tried once with
`max_tokens=1` (the generated token is left out of the scores), then select generates
and matches as on a chat model. The form that worked is remembered per backend and a
one-line warning says which one is used.
"""
from __future__ import annotations

import math
import re
import warnings

from lmnb.errors import LmnbError
from lmnb.lang.backend import SelectResult
from lmnb.lang.choices import greedy_token, unconditional_normalized
from lmnb.lang.openai_requests import ApiCall, api_error, build_request, send

# select forms for completion models, tried in this order until one is accepted
FORMS = ("echo", "echo_one", "generate")


class EchoRefused(Exception):
    """The server did not answer the echo form with prompt logprobs."""


def select_completion(backend, prompt: str, choices: list[str], method: str, counters: list) -> SelectResult:
    """Score by prompt logprobs in the first form this server accepts."""
    form = getattr(backend, "select_form", FORMS[0])
    while form != "generate":
        try:
            return select_by_logprobs(backend, prompt, choices, method, counters,
                                      max_tokens=0 if form == "echo" else 1, probe=True)
        except EchoRefused as e:
            nxt = FORMS[FORMS.index(form) + 1]
            _warn(backend, form, nxt, str(e))
            form = backend.select_form = nxt
    return select_by_generation(backend, prompt, choices, counters)


def _warn(backend, form: str, nxt: str, why: str) -> None:
    said = "echo with max_tokens=0" if form == "echo" else "echo with max_tokens=1"
    then = ("retrying with max_tokens=1" if nxt == "echo_one"
            else "select generates and matches the options instead of scoring them")
    warnings.warn(f"lm.OpenAI: {backend.endpoint()} refused {said} ({why}); {then}", RuntimeWarning,
                  stacklevel=2)


def select_by_logprobs(backend, prompt: str, choices: list[str], method: str, counters: list,
                       max_tokens: int = 0, probe: bool = False) -> SelectResult:
    prompts = [prompt + c for c in choices]
    uncond = method == "unconditional_likelihood_normalized"
    if uncond:
        prompts += choices
    kw = {"model": backend.model, "prompt": prompts, "echo": True, "logprobs": 1, "max_tokens": max_tokens,
          "temperature": 0}
    resp = _probe(backend, kw) if probe else send(backend, False, **kw)
    usage = resp.usage
    backend.add_usage(counters, calls=1, prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                      completion_tokens=getattr(usage, "completion_tokens", 0) or 0)
    rows = sorted(resp.choices, key=lambda c: c.index)
    if len(rows) != len(prompts) or any(r.logprobs is None or not r.logprobs.text_offset for r in rows):
        if probe:
            raise EchoRefused("no prompt logprobs in the answer")
        raise LmnbError(f"{backend.endpoint()} returned no prompt logprobs for echo=True; select needs "
                        "them on a completion model (or use a chat model, which generates and matches)")
    cond = [_option_logprobs(r.logprobs, len(prompt), len(prompt) + len(c)) for r, c in zip(rows, choices)]
    normalized = [sum(x) / len(x) if x else -math.inf for x in cond]
    if method == "greedy_token":
        best = greedy_token(cond)
    elif uncond:
        alone = [_alone_logprobs(r.logprobs, len(c)) for r, c in zip(rows[len(choices):], choices)]
        scores = unconditional_normalized(cond, alone)
        best = max(range(len(choices)), key=scores.__getitem__)
    else:
        best = max(range(len(choices)), key=normalized.__getitem__)
    meta = {"normalized_prompt_logprobs": normalized, "input_token_logprobs": cond, "method": method,
            "api_calls": 1}
    return SelectResult(best, choices[best], meta)


def _probe(backend, kw: dict):
    """One call without the SDK's retries: a refusal moves on to the next form at once;
    errors that are not about the form (key, model, timeout) are raised as usual."""
    import openai

    try:
        return backend.client.with_options(max_retries=0).completions.create(**kw)
    except openai.APIStatusError as e:
        if e.status_code >= 500 or e.status_code in (400, 422):
            raise EchoRefused(f"HTTP {e.status_code}") from None
        raise api_error(backend, e) from None
    except openai.APITimeoutError as e:
        raise api_error(backend, e) from None
    except openai.APIConnectionError:
        raise EchoRefused("the connection was dropped") from None


def _option_logprobs(lp, prompt_len: int, end: int) -> list[float]:
    """Logprobs of the tokens that end past the prompt and start before `end` (the
    option's tokens; a generated token after the option is left out)."""
    out = []
    for tok, off, val in zip(lp.tokens, lp.text_offset, lp.token_logprobs):
        if off + len(tok) > prompt_len and off < end and val is not None:
            out.append(val)
    return out


def _alone_logprobs(lp, end: int) -> list[float]:
    """An option sent alone: its tokens after the first (nothing precedes the first)."""
    return [v for off, v in list(zip(lp.text_offset, lp.token_logprobs))[1:] if off < end and v is not None]


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
