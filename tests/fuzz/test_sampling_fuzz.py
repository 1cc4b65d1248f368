"""Sampling parameters: every value either works or raises a clear LmnbError, and a
request with valid ones never kills the engine thread (random-weight dummy model)."""
from __future__ import annotations

import math

from hypothesis import example, given, settings
from hypothesis import strategies as st

import lmnb as lm
from lmnb.lang import ir
from lmnb.runtime.sampling_params import SamplingParams

from .guard import outcome
from .sampling_strategies import sampling_kwargs
from .values import anything


def _sane(p: SamplingParams) -> None:
    """What the engine relies on once a SamplingParams exists."""
    assert 0 <= p.max_new_tokens and math.isfinite(p.temperature) and 0 <= p.temperature
    assert 0 < p.top_p <= 1 and 0 <= p.min_p <= 1 and isinstance(p.top_k, int)
    assert all(isinstance(s, str) and s for s in p.stop)
    assert all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in p.stop_token_ids)
    assert isinstance(p.ignore_eos, bool) and isinstance(p.return_logprob, bool)


@settings(max_examples=200, deadline=None)
@given(sampling_kwargs())
@example({"temperature": 10**400})          # OverflowError from math.isnan(int)
@example({"seed": 2**64})                   # torch could not take the seed
@example({"ignore_eos": "yes"})
@example({"stop": b"ab"})                   # bytes iterated as ints
def test_sampling_params_work_or_raise_clear_error(kw):
    params, _ = outcome(SamplingParams.make, **kw)
    if params is not None:
        _sane(params)


@settings(max_examples=40, deadline=None)
@given(sampling_kwargs(plausible_only=True) | sampling_kwargs())
@example({"temperature": 1e-300})                         # logits / t overflowed: engine died
@example({"temperature": 1e308, "regex": "a+b"})          # -inf / inf = NaN under a mask
@example({"top_k": 2**70})                                # int64 overflow in the sampler
@example({"top_logprobs_num": 10**6, "return_logprob": True})   # topk past the vocabulary
@example({"regex": "xxx", "max_new_tokens": 1})           # jump-forward went past the limit
def test_valid_parameters_never_kill_the_engine(tiny, kw):
    kw["max_new_tokens"] = min(kw["max_new_tokens"], 6) if isinstance(kw.get("max_new_tokens"), int) else 4
    out, err = outcome(tiny.generate, "Hello", seconds=60, **kw)
    assert tiny.alive(), err
    if out is not None:
        assert len(out) == 1 and isinstance(out[0]["text"], str)
        assert out[0]["meta"]["completion_tokens"] <= max(kw["max_new_tokens"], 0)
    tiny.check_integrity()


GEN_ARGS = {"max_tokens": "max_new_tokens", "stop": "stop", "temperature": "temperature", "top_p": "top_p",
            "top_k": "top_k", "min_p": "min_p", "seed": "seed", "ignore_eos": "ignore_eos",
            "stop_token_ids": "stop_token_ids", "regex": "regex", "json_schema": "json_schema",
            "dtype": None, "choices": None}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=4) | anything, sampling_kwargs(), st.sampled_from(list(GEN_ARGS)), anything)
@example("x", {}, "dtype", [])             # unhashable dtype: TypeError
@example("x", {}, "max_tokens", True)      # select(choices=True): TypeError
@example("x", {}, "json_schema", {"a": b""})   # json.dumps TypeError
@example("x", {}, "dtype", "complex")
@example("x", {}, "choices", ["a", ""])
def test_gen_and_select_arguments_work_or_raise_clear_error(name, kw, extra_name, extra_value):
    args = {g: kw[r] for g, r in GEN_ARGS.items() if r in kw}
    args[extra_name] = extra_value
    node, _ = outcome(lm.gen, name, **args)
    if node is not None:
        assert isinstance(node, (ir.Gen, ir.Select))
    outcome(lm.select, name, choices=extra_value, method=kw.get("stop", "greedy_token"))
