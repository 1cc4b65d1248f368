"""Hypothesis strategies: small regexes built from a grammar of regex constructs."""
from __future__ import annotations

import re

from hypothesis import strategies as st

LITERALS = ["a", "b", "z", "0", "7", " ", '"', "\\.", "\\{", "é", "中", "😀", "\\n", "-"]
CLASSES = ["[ab]", "[^ab]", "[a-f]", "[0-9]", "\\d", "\\w", "\\s", "\\W", "[é中😀x]",
           "[^\"\\\\]", ".", "[\\u00e0-\\u00ff]", "[^a-z]"]

atoms = st.one_of(st.sampled_from(LITERALS), st.sampled_from(CLASSES))


def _quantified(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    quant = st.sampled_from(["*", "+", "?", "{2}", "{1,3}", "{0,2}", "{2,}", "*?"])
    return st.builds(lambda r, q: f"(?:{r}){q}", inner, quant)


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(inner, min_size=2, max_size=4).map("".join),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: "(?:" + "|".join(xs) + ")"),
        _quantified(inner),
        inner.map(lambda r: f"({r})"),
    )


regexes = st.recursive(atoms, _extend, max_leaves=8)


def fullmatch(pattern: str, text: str) -> bool:
    """Python's verdict with the ASCII class semantics lmnb uses for \\d, \\w, \\s."""
    return re.fullmatch(pattern, text, flags=re.ASCII) is not None
