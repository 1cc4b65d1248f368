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
