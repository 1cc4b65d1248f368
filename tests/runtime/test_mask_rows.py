"""The sampler's grammar masks: bitmask cursors (one copy, expanded on the device) and
per-state boolean masks mixed in one batch give exactly the allowed sets; ids past the
bitmask are banned; rows without a grammar are untouched."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from lmnb.runtime.sampler import DeviceMasks, apply_masks


class _Bits:
    def __init__(self, allowed: np.ndarray, words: int):
        padded = np.zeros(words * 32, np.uint8)
        padded[: len(allowed)] = allowed
        self.words = np.packbits(padded, bitorder="little").view(np.int32)

    def bitmask(self) -> np.ndarray:
        return self.words


class _Bool:
    def __init__(self, allowed: np.ndarray):
        self.mask = torch.from_numpy(allowed.astype(bool))

    def allowed_mask(self) -> torch.Tensor:
        return self.mask


def test_mixed_mask_kinds_in_one_batch():
    rng = np.random.default_rng(0)
    width = 200   # wider than the 6 words (192 ids) the bitmask cursors cover
    a, b = rng.random(192) < 0.3, rng.random(width) < 0.5
    reqs = [SimpleNamespace(guide=_Bits(a, 6)), SimpleNamespace(guide=None),
            SimpleNamespace(guide=_Bool(b)), SimpleNamespace(guide=_Bits(~a, 6))]
    logits = torch.zeros(4, width)
    apply_masks(logits, reqs, DeviceMasks())
    finite = torch.isfinite(logits).numpy()
    assert (finite[0, :192] == a).all() and not finite[0, 192:].any()
    assert finite[1].all()
    assert (finite[2] == b).all()
    assert (finite[3, :192] == ~a).all() and not finite[3, 192:].any()


def test_all_bitmask_rows():
    allowed = np.zeros(64, bool)
    allowed[[0, 31, 32, 63]] = True   # word edges, the sign bit included
    reqs = [SimpleNamespace(guide=_Bits(allowed, 2)) for _ in range(3)]
    logits = torch.zeros(3, 64)
    apply_masks(logits, reqs, DeviceMasks())
    assert (torch.isfinite(logits).numpy() == allowed).all()
