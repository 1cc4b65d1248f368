"""Hypothesis strategies for arbitrary Python values: the wrong types users pass."""
from __future__ import annotations

import math

from hypothesis import strategies as st

NASTY_NUMBERS = [0, -1, 1, 2**31, 2**63, 2**64, 10**30, -(10**30), 0.0, -0.0, 1e-300, 5e-324,
                 1e300, math.inf, -math.inf, math.nan, True, False]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from(NASTY_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.binary(max_size=4),
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(st.text(max_size=3), inner, max_size=2)),
    max_leaves=5,
)
