"""Regex → byte FSM: patterns from a grammar agree with Python's `re.fullmatch`; any
text compiles or raises a clear LmnbError; pathological patterns hit a size limit fast."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmnb.runtime.constrained import build_regex_from_schema, compile_regex

from .guard import outcome, within
from .regex_grammar import pattern_text, regexes, samples


def _python(pattern: str, text: str, match=re.fullmatch) -> bool | None:
    """Python's verdict under lmnb's semantics: \\d \\w \\s are ASCII, (?i) folds as `re` does
    (None where `re` has no such mode: ASCII classes with Unicode case folding). `match`:
    re.fullmatch (grammar regexes) or re.search (JSON Schema patterns)."""
    if not re.search(r"\\[dDwWsS]", pattern):
        return match(pattern, text) is not None
    if re.search(r"\(\?[a-z]*i", pattern) and not text.isascii():
        return None
    return match(pattern, text, flags=re.ASCII) is not None


def _agree(fsm, pattern: str, text: str) -> None:
    want = _python(pattern, text)
    assert want is None or fsm.matches(text.encode()) == want, (pattern, text)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regexes, st.lists(samples, min_size=4, max_size=10), st.data())
@example(r"\0a", ["\x00a", "a"], None)                 # interegular rejected \0 (NUL)
@example(r"(?i:[a-zé])", ["ſ", "\u212a", "É", "S"], None)  # re folds ſ/s, Kelvin sign/k
def test_grammar_regexes_agree_with_re(pattern, texts, data):
    fsm, err = outcome(compile_regex, pattern, seconds=30)
    assert err is None, f"{pattern!r}: {err}"
    if data is not None:   # plus strings Python itself generates for the pattern
        texts = texts + [data.draw(st.from_regex(pattern, fullmatch=True), label="match")]
    for text in texts:
        _agree(fsm, pattern, text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern_text, st.lists(samples, max_size=4))
@example("\\0", [])
@example("(?u:\\w)", ["ª"])             # Python's unicode \w: a clear error, not a silent ASCII \w
@example("a{0,4000000000}", [])          # a billion copies: now a size error at once
@example("(?:" * 120 + "a" + ")" * 120, [])   # RecursionError in the regex parser
def test_any_text_compiles_or_raises_clear_error(pattern, texts):
    fsm, _ = outcome(compile_regex, pattern, seconds=30)
    for text in texts if fsm is not None else ():
        _agree(fsm, pattern, text)


@pytest.mark.parametrize("pattern", [
    r".*a.{18}",                                   # 2^18 DFA states
    r"(?:x{1000}){1000}",                          # a million positions
    r"(?:a?){3000}",                               # quadratic follow sets: hung in the DFA build
    build_regex_from_schema({"type": "string", "maxLength": 10_000}),
])
def test_pathological_patterns_hit_a_size_limit(pattern):
    with within(60, pattern[:80]), pytest.raises(Exception) as e:
        compile_regex(pattern)
    assert "too large" in str(e.value) and type(e.value).__name__ == "LmnbError", e.value


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regexes, st.lists(samples, min_size=4, max_size=10))
def test_canonical_regex_keeps_the_language(pattern, texts):
    """The explicit-class rewrite handed to llguidance matches exactly what the pattern
    matches (Python's verdict under lmnb's semantics), and so does the pattern emitted
    as JSON-string content, decoded (a search: wrapped in ^...$ for the comparison)."""
    from lmnb.runtime.constrained.regex_emit import emit_regex

    canon, err = outcome(emit_regex, pattern)
    if err is not None:
        assert type(err).__name__ == "LmnbError" and "\n" not in str(err), err
        return
    for text in texts:
        want = _python(pattern, text)
        if want is not None:
            assert (re.fullmatch(canon, text) is not None) == want, (pattern, canon, text)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(regexes, st.lists(samples, min_size=4, max_size=10))
@example(r"^(?:(?:a|[^\d\s]))*$", ["", "\u0663"])   # an Arabic-Indic digit: \d in Python only
@example(r"^[^\W\d]*$", ["\u00e9", "ab", "_"])      # \w holds \u00e9 in Python, not in ECMA
def test_json_string_patterns_are_sound(pattern, texts):
    """A JSON-Schema pattern emitted as JSON-string content: every text it accepts is a
    JSON string whose decoded value the pattern finds in both dialects (\\d \\w \\s ASCII as
    in ECMA-262, and Unicode as in Python), since a schema is checked by either."""
    import json

    from lmnb.runtime.constrained.regex_emit import json_string_pattern

    body, err = outcome(json_string_pattern, pattern)
    if err is not None:
        return
    for text in texts:
        encoded = json.dumps(text, ensure_ascii=False)
        if re.fullmatch(body, encoded[1:-1]):
            value = json.loads(encoded)
            assert _python(pattern, value, re.search) is not False, (pattern, encoded)
            if not re.search(r"\(\?[a-z]*i", pattern):
                assert re.search(pattern, value) is not None, (pattern, encoded)
