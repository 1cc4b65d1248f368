"""Batch masks: `LlgCursor.batch_bitmasks` (llguidance's threads, one call per step) gives
exactly each cursor's own `bitmask()`, for cursors at different places in different
patterns, cursors whose mask is already known and cursors past EOS."""
from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest

from lmnb.runtime.constrained.llg import LlgBackend, LlgCursor

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer", "minimum": -5, "maximum": 120}},
     "required": ["name", "age"]},
    {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4},
    {"type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}},
     "required": ["lat"]},
]


@pytest.fixture(scope="module")
def llg(smol_tokenizer):
    return LlgBackend(smol_tokenizer, vocab_size=len(smol_tokenizer) + 64)


def _one_by_one(cursors) -> np.ndarray:
    return np.stack([copy.copy(c).bitmask() if c._bits is None else c._bits for c in cursors])


def test_batch_masks_equal_single_masks_along_random_walks(llg):
    rng = random.Random(5)
    guides = [llg.compile(json_schema=json.dumps(s)) for s in SCHEMAS]
    guides.append(llg.compile(regex=r"(yes|no) because [a-z ]{3,20}\."))
    cursors = [g.cursor() for g in guides for _ in range(2)]
    steps = 0
    for _ in range(40):
        live = [c for c in cursors if not c.is_terminated()]
        if not live:
            break
        live[0].bitmask()                       # one row already known
        expect = _one_by_one(cursors)
        got = LlgCursor.batch_bitmasks(cursors)
        assert got.shape == expect.shape and (got == expect).all()
        for c, row in zip(cursors, got):        # each cursor now answers from its row
            assert (c.bitmask() == row).all()
        for c in live:
            allowed = np.flatnonzero(np.unpackbits(c.bitmask().view(np.uint8), bitorder="little"))
            c.accept_token(int(rng.choice(list(allowed))))
        steps += 1
    assert steps >= 10
    ended = [c for c in cursors if c.eos_seen]
    if ended:
        assert not LlgCursor.batch_bitmasks(ended).any()


def test_sampler_masks_a_mixed_batch_row_by_row(llg, backend):
    """The sampler's banned rows for llguidance cursors (one batch call) and byte-FSM
    cursors (per-state rows) together equal each cursor's own allowed mask."""
    import torch

    from lmnb.runtime.sampler import DeviceMasks, _banned

    pat = r"[0-9]{2,4}|x+"
    cursors = [llg.compile(regex=pat).cursor(), backend.compile(regex=pat).cursor(),
               llg.compile(regex=r"ab?c").cursor()]
    cursors[0].accept_token(llg.compile(regex=pat).vocab.encode_bytes(b"1")[0])
    width = len(cursors[0].allowed_mask()) + 7
    banned = _banned(cursors, width, torch.device("cpu"), DeviceMasks())
    for c, row in zip(cursors, banned):
        allowed = c.allowed_mask()
        assert (~row[: len(allowed)] == allowed).all() and row[len(allowed):].all()
