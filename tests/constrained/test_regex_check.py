"""Unsupported regex features fail early, naming the feature and where it is."""
from __future__ import annotations

import re

import pytest

from lmnb.errors import LmnbError
from lmnb.runtime.constrained import compile_regex, normalize_regex


@pytest.mark.parametrize("pattern, feature, pos", [
    (r"ab(?=c)", "lookahead", 2),
    (r"a(?!b)c", "negative lookahead", 1),
    (r"x(?<=a)b", "lookbehind", 1),
    (r"(?<!a)b", "negative lookbehind", 0),
    (r"(a)\1", "backreference \\1", 3),
    (r"(?P<n>a)(?P=n)", "named backreference", 8),
    (r"foo\bbar", "word boundary \\b", 3),
    (r"a\Bb", "non-boundary", 1),
    (r"\Aab", "anchor \\A", 0),
    (r"ab\Z", "anchor \\Z", 2),
    (r"a(?>bc|b)c", "atomic group", 1),
    (r"a*+b", "possessive quantifier *+", 1),
    (r"a{2,3}+", "possessive quantifier {2,3}+", 1),
    (r"(a)?(?(1)b|c)", "conditional group", 4),
    (r"a^b", "anchor ^", 1),
    (r"a$b", "anchor $", 1),
    (r"(?x)a b", "inline flag (?x)", 0),
])
def test_unsupported_feature_named_with_position(pattern, feature, pos):
    with pytest.raises(LmnbError) as e:
        compile_regex(pattern)
    msg = str(e.value)
    assert feature in msg and f"position {pos}" in msg
    assert "\n" not in msg


def test_invalid_regex_reports_position():
    with pytest.raises(LmnbError, match="position 3"):
        compile_regex("abc)")


@pytest.mark.parametrize("pattern, text", [
    (r"^ab$", "ab"),
    (r"\u00e9+", "éé"),
    (r"[\u4e00-\u9fff]{2}", "中文"),
    (r"\N{GREEK SMALL LETTER ALPHA}", "α"),
    (r"a{", "a{"),
    (r"a(?#comment)b", "ab"),
    (r"(?i)hello", "HeLLo"),
    (r"(?s:.)", "\n"),
    (r"[\]a]+", "]a"),
    (r"[^]]", "x"),
    (r"\101\x42", "AB"),
    (r"a+?b*?", "aab"),
])
def test_supported_spellings(pattern, text):
    fsm = compile_regex(pattern)
    assert fsm.matches(text.encode())
    assert re.fullmatch(pattern, text)


def test_backslash_escapes_inside_class_are_not_backreferences():
    assert normalize_regex(r"[\1]") == r"[\1]"


def test_empty_language_is_an_error():
    with pytest.raises(LmnbError, match="matches no string"):
        compile_regex(r"a[^\x00-\U0010ffff]")
