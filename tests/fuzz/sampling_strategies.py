"""Hypothesis strategies for sampling keyword arguments: plausible values (valid or just
out of range) mixed with values of any type, under real and misspelt names."""
from __future__ import annotations

from hypothesis import strategies as st

from .values import anything

PLAUSIBLE = {
    "max_new_tokens": st.integers(-2, 6),
    "temperature": st.one_of(st.floats(0, 2), st.sampled_from([1e-300, 1e-8, 1e5, 1e30])),
    "top_p": st.floats(0, 1.5),
    "top_k": st.integers(-3, 600),
    "min_p": st.floats(-0.5, 1.5),
    "seed": st.integers(-5, 2**64 + 5),
    "stop": st.one_of(st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3)),
    "stop_token_ids": st.lists(st.integers(-2, 600), max_size=3),
    "ignore_eos": st.booleans(),
    "return_logprob": st.booleans(),
    "top_logprobs_num": st.integers(-1, 10**6),
    "logprob_start_len": st.integers(-3, 10**6),
    "regex": st.sampled_from([r"[ab]{1,3}", r"\d+", "(", r"a\1", "", "x" * 3]),
    "json_schema": st.sampled_from(['{"type": "integer"}', {"type": "boolean"}, "{", {"type": 5}]),
}
NAMES = sorted(PLAUSIBLE) + ["temp", "max_tokens", "n"]


@st.composite
def sampling_kwargs(draw, plausible_only: bool = False) -> dict:
    names = draw(st.lists(st.sampled_from(sorted(PLAUSIBLE) if plausible_only else NAMES),
                          unique=True, max_size=5))
    return {n: draw(PLAUSIBLE[n] if plausible_only else st.one_of(PLAUSIBLE[n], anything)
                    if n in PLAUSIBLE else anything) for n in names}
