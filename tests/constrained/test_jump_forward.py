"""Compressed FSM: forced strings are found once and returned whole."""
from __future__ import annotations

import json

import jsonschema

from lmnb.runtime.constrained import compile_regex
from lmnb.runtime.constrained.jump_forward import JumpTable, singular_states

from .walk import random_walk

LONG_KEYS = {
    "type": "object",
    "properties": {
        "customer_identification_number": {"type": "integer"},
        "preferred_communication_channel": {"enum": ["email", "phone"]},
        "internal_account_status_flag": {"type": "boolean"},
    },
    "required": ["customer_identification_number", "preferred_communication_channel",
                 "internal_account_status_flag"],
}


def test_jump_forward_returns_long_constant_keys(backend):
    guide = backend.compile(json_schema=LONG_KEYS)
    cursor = guide.cursor()
    assert cursor.jump_forward() == '{"customer_identification_number":'
    cursor.accept_text(cursor.jump_forward())
    assert cursor.jump_forward() is None  # the integer is free
    cursor.accept_text("42")
    assert cursor.jump_forward() is None  # more digits or the comma
    cursor.accept_text(",")
    assert cursor.jump_forward() == '"preferred_communication_channel":"'  # both enums start "
    cursor.accept_text('"preferred_communication_channel":"e')
    assert cursor.jump_forward() == 'mail","internal_account_status_flag":'
    cursor.accept_text(cursor.jump_forward() + "true")
    assert cursor.jump_forward() == "}"
    cursor.accept_text("}")
    assert cursor.is_terminated() and cursor.jump_forward() is None


def test_walks_with_jumps_still_validate(backend):
    guide = backend.compile(json_schema=LONG_KEYS)
    for seed in range(5):
        text = random_walk(guide, seed, jump_prob=1.0)
        jsonschema.validate(json.loads(text), LONG_KEYS)


def test_jump_stops_at_accepting_states_and_branches():
    fsm = compile_regex(r"abc(?:def)?")
    jumps = JumpTable(fsm)
    assert jumps.forced(fsm.initial) == ("abc", fsm.step(fsm.initial, b"abc"))
    assert jumps.forced(fsm.step(fsm.initial, b"abc")) is None  # accepting: may stop here
    assert jumps.forced(fsm.step(fsm.initial, b"abcd"))[0] == "ef"
    branchy = compile_regex(r"a|b")
    assert JumpTable(branchy).forced(branchy.initial) is None


def test_jump_returns_whole_characters_only():
    fsm = compile_regex(r"x(?:é|è)")  # é = C3 A9, è = C3 A8: the lead byte is forced
    jumps = JumpTable(fsm)
    assert jumps.forced(fsm.initial)[0] == "x"  # not "x\xc3"
    mid = fsm.step(fsm.initial, "xé".encode()[:2])
    assert not fsm.boundary[mid] and jumps.forced(mid) is None
    fsm = compile_regex(r"😀!")
    assert JumpTable(fsm).forced(fsm.initial)[0] == "😀!"


def test_singular_states_detected_once_per_pattern(backend):
    guide = backend.compile(json_schema=LONG_KEYS)
    assert guide.jumps is backend.compile(json_schema=LONG_KEYS).jumps
    assert len(singular_states(guide.fsm)) > 90
    a, b = guide.cursor(), guide.cursor()
    assert a.jump_forward() is b.jump_forward()


class _CountingMatcher:
    """An llguidance matcher that counts its forced-bytes computations."""

    def __init__(self, matcher) -> None:
        self._m, self.ff_calls = matcher, 0

    def compute_ff_bytes(self):
        self.ff_calls += 1
        return self._m.compute_ff_bytes()

    def __getattr__(self, name):
        return getattr(self._m, name)


def test_llg_jump_asks_for_the_forced_bytes_once_per_position(smol_tokenizer):
    """A jump (`jump_forward`, then `accept_text` of its text) computes the forced bytes
    once; any move of the cursor forgets them, and a copy starts with them."""
    from copy import copy

    from lmnb.runtime.constrained.llg import LlgBackend

    cursor = LlgBackend(smol_tokenizer, vocab_size=len(smol_tokenizer) + 64).compile(
        json_schema=LONG_KEYS).cursor()
    cursor.matcher = counting = _CountingMatcher(cursor.matcher)
    forced = cursor.jump_forward()
    assert forced == '{"customer_identification_number":'
    assert cursor.jump_forward() == forced
    cursor.accept_text(forced)
    assert counting.ff_calls == 1
    assert cursor.jump_forward() is None and counting.ff_calls == 2   # moved: asked again
    for piece in ("4", ","):
        cursor.accept_token(smol_tokenizer.encode(piece, add_special_tokens=False)[0])
    assert cursor.jump_forward() == '"preferred_communication_channel":"'
    twin = copy(cursor)
    assert twin.jump_forward() == '"preferred_communication_channel":"'
    cursor.accept_text(twin.jump_forward())
    assert twin.jump_forward() == '"preferred_communication_channel":"'   # its own position
    assert cursor.jump_forward() is None                                  # email or phone


def test_common_prefix_len_matches_a_plain_scan():
    import random

    from lmnb.runtime.token_ids import common_prefix_len

    rng = random.Random(0)
    for _ in range(500):
        a = [rng.randrange(3) for _ in range(rng.randrange(0, 80))]
        b = a[: rng.randrange(0, len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(0, 80))]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        assert common_prefix_len(a, b) == n == common_prefix_len(b, a)
