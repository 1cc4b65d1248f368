"""Regexes from a wider grammar than tests/constrained/regex_strategies.py: escapes
(hex, \\u, octal, \\0), more classes, inline flag groups, named groups, bounded and lazy
repetition, empty alternatives, ^/$ at the ends, literal braces."""
from __future__ import annotations

import re

from hypothesis import strategies as st

from tests.constrained.regex_strategies import CLASSES, LITERALS

MORE_LITERALS = ["\\x41", "\\u00e9", "\\0", "\\101", "\\t", "{", "a{", "\\}", "]", "\\-", "\\*", "K"]
MORE_CLASSES = ["\\D", "\\S", "[^\\d\\s]", "[a\\-z]", "[-a]", "[]a]", "[\\]]", "[\\x00-\\x1f]",
                "[\\0-\\7]", "[^\\W\\d]", "[.]", "[$^]", "[K-M]"]

atoms = st.sampled_from(LITERALS + MORE_LITERALS + CLASSES + MORE_CLASSES)


def _wrap(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    quant = st.sampled_from(["*", "+", "?", "{0}", "{3}", "{1,3}", "{,2}", "{2,}", "*?", "+?", "??",
                             "{1,2}?"])
    group = st.sampled_from(["(?:{})", "({})", "(?P<g{}>{})", "(?i:{})", "(?s:{})"])
    return st.one_of(
        st.lists(inner, min_size=2, max_size=4).map("".join),
        st.lists(inner | st.just(""), min_size=2, max_size=3).map(lambda xs: "(?:" + "|".join(xs) + ")"),
        st.tuples(inner, quant).map(lambda t: f"(?:{t[0]}){t[1]}"),
        st.tuples(group, inner, st.integers(0, 99)).map(
            lambda t: t[0].format(t[2], t[1]) if "P<" in t[0] else t[0].format(t[1])),
    )


def _anchor(r: str, start: bool, end: bool) -> str:
    return ("^" if start else "") + r + ("$" if end else "")


def _python_compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:   # e.g. two groups drew the same name
        return False
    return True


regexes = st.builds(_anchor, st.recursive(atoms, _wrap, max_leaves=8), st.booleans(),
                    st.booleans()).filter(_python_compiles)

# characters the patterns above talk about, plus case-folding oddities (Kelvin sign, long s)
SAMPLE_CHARS = list('abz07 ".{}é中😀\n\t-xyÿ٣_AK\u212aſ]\x00\x01\x07[$^') + ["\\"]
samples = st.text(alphabet=st.sampled_from(SAMPLE_CHARS), max_size=8)

# arbitrary pattern text, heavy in metacharacters
pattern_text = st.text(alphabet=st.sampled_from(list("ab()[]{}^$.*+?|\\-:=!<>P0123456789,uxNdDsSwWbBAZ#i"
                                                     "é中 ")), max_size=16) | st.text(max_size=12)
