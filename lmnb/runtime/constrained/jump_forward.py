"""Compressed FSM: find the strings a pattern forces (SGLang's jump-forward).

A state is *singular* when it is not accepting and exactly one byte leads on:
whatever the model would sample, the next byte is fixed. Chains of singular
states are forced text, which the engine appends in one extend step instead of
decoding it token by token. Singularity is found once per pattern with one
vectorised pass over the transition table; the forced text of a state is
computed on first request and cached.
"""
from __future__ import annotations

import threading

import numpy as np

from lmnb.runtime.constrained.regex_fsm import ByteFSM


class JumpTable:
    """Per-pattern singular-path index over a `ByteFSM`."""

    def __init__(self, fsm: ByteFSM):
        self.fsm = fsm
        live = fsm.trans != fsm.dead
        self.out_degree = live.sum(axis=1)
        self.only_byte = live.argmax(axis=1)
        self.singular = (self.out_degree == 1) & ~fsm.accepting
        self._cache: dict[int, tuple[str, int] | None] = {}
        self._lock = threading.Lock()

    def has_successor(self, state: int) -> bool:
        return bool(self.out_degree[state] > 0)

    def forced(self, state: int) -> tuple[str, int] | None:
        """(text, state after it) for the forced text from `state`, or None.

        The text is cut at the last whole character, so it is always valid
        UTF-8; from a mid-character state (a token split a character) there
        is no jump, because the engine's text would not end on a character.
        """
        hit = self._cache.get(state, False)
        if hit is not False:
            return hit
        result = self._walk(state)
        with self._lock:
            self._cache[state] = result
        return result

    def _walk(self, state: int) -> tuple[str, int] | None:
        fsm = self.fsm
        if not fsm.boundary[state] or not self.singular[state]:
            return None
        buf = bytearray()
        cut, cut_state, seen = 0, state, {state}
        s = state
        while self.singular[s]:
            b = int(self.only_byte[s])
            buf.append(b)
            s = int(fsm.trans[s, b])
            if s in seen:  # defensive: a forced cycle would never accept
                break
            seen.add(s)
            if fsm.boundary[s]:
                cut, cut_state = len(buf), s
        if cut == 0:
            return None
        return bytes(buf[:cut]).decode("utf-8"), cut_state


def singular_states(fsm: ByteFSM) -> np.ndarray:
    """Indices of singular states (for inspection and tests)."""
    return np.flatnonzero(JumpTable(fsm).singular)
