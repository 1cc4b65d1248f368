"""Random walks through the default engine's guides, checked token by token against
lmnb's own byte automaton of the same pattern (two independent engines must agree)."""
from __future__ import annotations

import numpy as np

_SINGLE: dict[int, np.ndarray] = {}


def _single_bytes(vocab) -> np.ndarray:
    """Which ids are one-byte tokens (steering candidates that always exist)."""
    if id(vocab) not in _SINGLE:
        flags = np.zeros(vocab.vocab_size, bool)
        flags[[i for i, t in enumerate(vocab.tokens) if t and len(t) == 1]] = True
        _SINGLE[id(vocab)] = flags
    return _SINGLE[id(vocab)]


def _distance(guide) -> np.ndarray:
    """Fewest bytes from each FSM state to acceptance (kept on the guide: ids are reused)."""
    dist = getattr(guide, "_walk_dist", None)
    if dist is None:
        fsm = guide.fsm
        big = np.iinfo(np.int32).max // 2
        dist = np.where(fsm.accepting, 0, big).astype(np.int64)
        while True:
            new = np.minimum(dist, dist[fsm.trans].min(axis=1) + 1)
            new[fsm.dead] = big
            if (new == dist).all():
                break
            dist = new
        guide._walk_dist = dist
    return dist


def accepts(guide, text: str) -> bool:
    """Whether the engine accepts `text` as a whole output (tokenized greedily)."""
    cursor = guide.cursor()
    try:
        for tid in guide.vocab.encode_bytes(text.encode("utf-8")):
            cursor.accept_token(tid)
    except Exception:  # noqa: BLE001  (LmnbError: a token the mask forbids)
        return False
    return cursor.is_accepting()


def _agree(guide, state: int, mask: np.ndarray, rng: np.random.Generator, samples: int = 48):
    fsm, vocab = guide.fsm, guide.vocab
    allowed = np.flatnonzero(mask)
    ids = np.concatenate([rng.integers(0, vocab.vocab_size, samples),
                          rng.choice(allowed, min(samples, len(allowed)))])
    for tid in ids.tolist():
        if tid in vocab.eos_set:
            expect = bool(fsm.accepting[state])
        else:
            data = vocab.bytes_of(tid)
            expect = bool(data) and fsm.step(state, data) != fsm.dead
        assert bool(mask[tid]) == expect, (tid, vocab.bytes_of(tid), state)


def llg_walk(guide, seed: int, budget: int = 30, jump_prob: float = 0.3, check: int = 4) -> str:
    """Sample allowed tokens (sometimes jumping forward) until the guide terminates; steer
    towards acceptance after `budget` steps. Returns the text."""
    rng = np.random.default_rng(seed)
    fsm = guide.fsm
    dist = _distance(guide)
    cursor, out, state = guide.cursor(), bytearray(), fsm.initial
    vocab = guide.vocab
    eos = int(vocab.eos_ids[0])
    for step in range(budget + 3000):
        if cursor.is_terminated():
            break
        if rng.random() < jump_prob and (forced := cursor.jump_forward()):
            cursor.accept_text(forced)
            out += forced.encode()
            state = fsm.step(state, forced.encode())
            assert state != fsm.dead, bytes(out)
            continue
        mask = cursor.allowed_mask().numpy()
        if step < check:
            _agree(guide, state, mask, rng)
        allowed = np.flatnonzero(mask)
        assert len(allowed), f"no token allowed after {bytes(out)!r}"
        if step < budget:
            tid = int(rng.choice(allowed))
        elif fsm.accepting[state]:
            tid = eos
        else:   # steer home: the candidate that gets closest to acceptance
            cands = np.concatenate([allowed[_single_bytes(vocab)[allowed]],
                                    rng.choice(allowed, 64)])
            nxt = [fsm.step(state, vocab.bytes_of(int(t)) or b"") if int(t) not in vocab.eos_set
                   else fsm.dead for t in cands]
            tid = int(cands[int(np.argmin(dist[nxt]))])
        if tid in vocab.eos_set:
            cursor.accept_token(tid)
            break
        data = vocab.bytes_of(tid)
        cursor.accept_token(tid)
        out += data
        state = fsm.step(state, data)
        assert state != fsm.dead, bytes(out)
    assert cursor.is_accepting() and fsm.accepting[state], bytes(out)
    return out.decode("utf-8")
