"""The byte automaton accepts exactly what Python's `re.fullmatch` accepts."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lmnb.runtime.constrained import compile_regex
from lmnb.runtime.constrained.utf8 import char_ranges, utf8_sequences

from .regex_strategies import fullmatch, regexes

TEXT = st.text(alphabet=st.sampled_from(list('abz07 ".{é中😀\n-xyÿ٣_')), max_size=8)


@settings(max_examples=150, deadline=None)
@given(regexes, st.lists(TEXT, min_size=5, max_size=15))
def test_fsm_agrees_with_re(pattern, texts):
    fsm = compile_regex(pattern)
    for text in texts:
        assert fsm.matches(text.encode()) == fullmatch(pattern, text), (pattern, text)


@settings(max_examples=60, deadline=None)
@given(regexes, st.integers(0, 2**32 - 1))
def test_random_byte_walks_match(pattern, seed):
    """Walk the automaton on random allowed bytes; every accepted byte string is a match."""
    fsm = compile_regex(pattern)
    rng = np.random.default_rng(seed)
    state, out = fsm.initial, bytearray()
    for _ in range(30):
        if fsm.accepting[state] and rng.random() < 0.3:
            break
        nxt = np.flatnonzero(fsm.trans[state] != fsm.dead)
        if not len(nxt):
            break
        b = int(rng.choice(nxt))
        out.append(b)
        state = int(fsm.trans[state, b])
    if fsm.accepting[state]:
        assert fullmatch(pattern, out.decode("utf-8")), (pattern, bytes(out))
    assert fsm.boundary[state] == _is_whole_utf8(bytes(out))


def _is_whole_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0x10FFFF), st.integers(0, 3000))
def test_utf8_sequences_cover_exactly(lo, width):
    hi = min(lo + width, 0x10FFFF)
    seqs = utf8_sequences(char_ranges(frozenset(map(chr, range(lo, hi + 1))), False))
    rng = np.random.default_rng(lo)
    for cp in {lo, hi, *rng.integers(lo, hi + 1, 20).tolist(), lo - 1, hi + 1}:
        if not 0 <= cp <= 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
            continue
        enc = chr(cp).encode()
        covered = any(len(s) == len(enc) and all(a <= b <= z for (a, z), b in zip(s, enc))
                      for s in seqs)
        assert covered == (lo <= cp <= hi), hex(cp)


def test_unicode_and_multibyte_classes():
    fsm = compile_regex(r"[é中😀]+x")
    assert fsm.matches("é中😀x".encode())
    assert not fsm.matches(b"ex")
    assert not fsm.matches("é".encode()[:1] + b"x")
