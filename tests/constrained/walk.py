"""Random walks through a guide, as an engine would drive it with a random sampler."""
from __future__ import annotations

import numpy as np

from lmnb.runtime.constrained.guide import Guide

_DIST: dict[int, np.ndarray] = {}


def distance_to_accept(guide: Guide) -> np.ndarray:
    """Fewest bytes from each state to an accepting state (large for dead)."""
    key = id(guide)
    if key not in _DIST:
        fsm = guide.fsm
        big = np.iinfo(np.int32).max // 2
        dist = np.where(fsm.accepting, 0, big).astype(np.int64)
        while True:
            new = np.minimum(dist, dist[fsm.trans].min(axis=1) + 1)
            new[fsm.dead] = big
            if (new == dist).all():
                break
            dist = new
        _DIST[key] = dist
    return _DIST[key]


def check_mask(guide: Guide, state: int, mask, rng: np.random.Generator, samples: int = 64):
    """The cached mask agrees with stepping the byte automaton token by token."""
    vocab, fsm = guide.vocab, guide.fsm
    ids = rng.integers(0, vocab.vocab_size, samples)
    allowed_ids = np.flatnonzero(mask.numpy())
    ids = np.concatenate([ids, rng.choice(allowed_ids, min(samples, len(allowed_ids)))])
    for tid in ids.tolist():
        data = vocab.bytes_of(tid)
        if tid in vocab.eos_set:
            expect = bool(fsm.accepting[state])
        else:
            expect = bool(data) and fsm.step(state, data) != fsm.dead
        assert bool(mask[tid]) == expect, (tid, data, state)


def random_walk(guide: Guide, seed: int, budget: int = 40, jump_prob: float = 0.3,
                check: bool = True) -> str:
    """Sample allowed tokens (jumping forward sometimes) until termination; return the text."""
    rng = np.random.default_rng(seed)
    dist = distance_to_accept(guide)
    cursor, out, vocab = guide.cursor(), bytearray(), guide.vocab
    eos = int(vocab.eos_ids[0])
    for step in range(budget + 2000):
        if cursor.is_terminated():
            break
        if rng.random() < jump_prob and (forced := cursor.jump_forward()):
            out += forced.encode()
            cursor.accept_text(forced)
            continue
        mask = cursor.allowed_mask()
        if check and step < 6:
            check_mask(guide, cursor.state, mask, rng)
        allowed = np.flatnonzero(mask.numpy())
        assert len(allowed), f"no token allowed after {bytes(out)!r}"
        if step >= budget:  # steer home: only tokens that get closer to acceptance
            if cursor.is_accepting():
                tid = eos
            else:
                nxt = guide.next_states(cursor.state)[allowed]
                tid = int(allowed[np.argmin(dist[nxt])])
        else:
            tid = int(rng.choice(allowed))
        if tid in vocab.eos_set:
            cursor.accept_token(tid)
            break
        out += vocab.bytes_of(tid)
        cursor.accept_token(tid)
    assert cursor.is_accepting(), bytes(out)
    return out.decode("utf-8")
