"""RadixCache against a naive model: random insert / match / lock / unlock / evict with the
integrity invariant (free + cached + in-use == pool size) checked after every step."""
from __future__ import annotations

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lmnb.runtime.memory import TokenSlotAllocator
from lmnb.runtime.radix_cache import RadixCache

POOL = 64
tokens = st.lists(st.integers(0, 3), min_size=1, max_size=12)


class RadixModel(RuleBasedStateMachine):
    """Naive model: a dict of cached token sequences -> their slots (every cached prefix),
    plus the set of locked sequences. Requests own slots until they insert them."""

    def __init__(self) -> None:
        super().__init__()
        self.alloc = TokenSlotAllocator(POOL)
        self.cache = RadixCache(self.alloc.free)
        self.naive: dict[tuple, int] = {}      # every cached prefix -> slot of its last token
        self.locks: list[tuple[object, tuple]] = []
        self.held: list[torch.Tensor] = []     # slots owned by "requests"

    def _naive_match(self, key: list[int]) -> int:
        n = 0
        while n < len(key) and tuple(key[: n + 1]) in self.naive:
            n += 1
        return n

    @rule(key=tokens)
    def insert(self, key):
        need = len(key)
        if self.alloc.available() < need:
            self.cache.evict(need - self.alloc.available())
            self._resync()
        slots = self.alloc.alloc(need)
        if slots is None:
            return
        matched = self.cache.insert(key, slots)
        assert matched == self._naive_match(key)
        self.alloc.free(slots[:matched])           # the caller frees its duplicates
        for i in range(matched, len(key)):
            self.naive[tuple(key[: i + 1])] = int(slots[i])

    @rule(key=tokens)
    def match(self, key):
        value, node = self.cache.match_prefix(key)
        n = self._naive_match(key)
        assert value.numel() == n
        assert value.tolist() == [self.naive[tuple(key[: i + 1])] for i in range(n)]

    @rule(key=tokens)
    def lock(self, key):
        value, node = self.cache.match_prefix(key)
        self.cache.inc_lock_ref(node)
        self.locks.append((node, tuple(key[: value.numel()])))

    @precondition(lambda self: self.locks)
    @rule(i=st.integers(0, 100))
    def unlock(self, i):
        node, _ = self.locks.pop(i % len(self.locks))
        self.cache.dec_lock_ref(node)

    @rule(n=st.integers(1, POOL))
    def evict(self, n):
        before = self.alloc.available()
        evictable = self.cache.evictable_size
        freed = self.cache.evict(n)
        assert self.alloc.available() - before == freed
        assert freed >= min(n, evictable) or self.cache.evictable_size == 0
        self._resync()

    @rule(n=st.integers(1, 8))
    def request_holds(self, n):
        slots = self.alloc.alloc(n)
        if slots is not None:
            self.held.append(slots)

    @precondition(lambda self: self.held)
    @rule()
    def request_frees(self):
        self.alloc.free(self.held.pop())

    def _resync(self) -> None:
        """After eviction the naive dict keeps only what the tree still has; locked
        paths must have survived."""
        alive = {}
        for key in list(self.naive):
            value, _ = self.cache.match_prefix(list(key))
            if value.numel() == len(key):
                alive[key] = self.naive[key]
        for _, key in self.locks:
            for i in range(len(key)):
                assert tuple(key[: i + 1]) in alive, "a locked prefix was evicted"
        self.naive = alive

    @invariant()
    def integrity(self):
        self.cache.check_integrity()
        in_use = sum(h.numel() for h in self.held)
        assert self.alloc.available() + self.cache.total_size() + in_use == POOL
        every = torch.cat([self.alloc.free_slots(), self.cache.cached_slots(), *self.held])
        assert every.unique().numel() == POOL
        assert self.cache.total_size() == len(self.naive)


TestRadixModel = RadixModel.TestCase
TestRadixModel.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


def test_split_keeps_values_and_locks():
    alloc = TokenSlotAllocator(16)
    cache = RadixCache(alloc.free)
    slots = alloc.alloc(5)
    cache.insert([1, 2, 3, 4, 5], slots)
    v, node = cache.match_prefix([1, 2, 3, 4, 5])
    cache.inc_lock_ref(node)
    v2, mid = cache.match_prefix([1, 2, 9])       # splits the edge after [1, 2]
    assert v2.tolist() == slots[:2].tolist()
    assert mid.lock_ref == 1 and cache.protected_size == 5
    cache.check_integrity()
    cache.dec_lock_ref(node)
    assert cache.evict(100) == 5 and alloc.available() == 16


def test_lru_evicts_oldest_unlocked_leaf_first():
    alloc = TokenSlotAllocator(16)
    cache = RadixCache(alloc.free)
    cache.insert([1, 1], alloc.alloc(2))
    cache.insert([2, 2], alloc.alloc(2))
    cache.match_prefix([1, 1])                    # touch [1, 1]: [2, 2] is now older
    cache.evict(1)
    assert cache.match_prefix([2, 2])[0].numel() == 0
    assert cache.match_prefix([1, 1])[0].numel() == 2
