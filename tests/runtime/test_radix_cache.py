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

    @rule(key=tokens, n=st.integers(0, 12), split=st.integers(0, 12))
    def continuation(self, key, n, split):
        """What follows key in the tree (read-only), from the root or from the node of a
        cached prefix of key: a cached extension of key, as long as n unless the tree
        ends first; [] when key is not all cached."""
        sizes = sorted((len(x.key), x.value.tolist()) for x in self.cache.nodes())
        node, rest = None, key
        if self.locks:
            node, path = self.locks[split % len(self.locks)]
            rest = list(path) + key   # a key continuing that node's path
            got = self.cache.continuation(key, n, node)
        else:
            got = self.cache.continuation(key, n)
        assert sorted((len(x.key), x.value.tolist()) for x in self.cache.nodes()) == sizes
        full = tuple(rest)
        if self._naive_match(list(full)) < len(full) or n == 0:
            assert got == []
            return
        assert len(got) <= n
        for j in range(1, len(got) + 1):
            assert full + tuple(got[:j]) in self.naive
        if len(got) < n:   # the branch it followed ends there
            end = full + tuple(got)
            assert not any(len(k) == len(end) + 1 and k[:-1] == end for k in self.naive)

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

    @precondition(lambda self: self.locks)
    @rule(i=st.integers(0, 100), more=tokens)
    def insert_below(self, i, more):
        """A request caching its newest tokens below its locked path: the same answer as
        an insert of the whole key, and the node returned ends exactly there."""
        node, prefix = self.locks[i % len(self.locks)]
        key = list(prefix) + more
        if self.alloc.available() < len(more):
            return
        slots = self.alloc.alloc(len(more))
        expect = self._naive_match(key) - len(prefix)
        cached, end = self.cache.insert_below(node, more, slots, hit=True)
        assert cached.numel() == expect
        assert cached.tolist() == [self.naive[tuple(key[: len(prefix) + j + 1])] for j in range(expect)]
        self.alloc.free(slots[:expect])
        for j in range(expect, len(more)):
            self.naive[tuple(key[: len(prefix) + j + 1])] = int(slots[j])
        path, path_slots = self.cache.path_of(end)
        assert path == key and self.cache.path_len(end) == len(key)
        value, found = self.cache.match_prefix(key)
        assert found is end and torch.equal(value, path_slots)

    @precondition(lambda self: self.locks)
    @rule(i=st.integers(0, 100), n=st.integers(0, 12))
    def ancestor_at(self, i, n):
        """Cutting a locked path back: the node a match of that prefix finds."""
        node, prefix = self.locks[i % len(self.locks)]
        n = min(n, len(prefix))
        up = self.cache.ancestor_at(node, n)
        assert self.cache.path_of(up)[0] == list(prefix[:n])
        assert self.cache.match_prefix(list(prefix[:n]))[1] is up

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


def _shape(cache: RadixCache) -> list:
    """Every node as (path, hits, lock_ref), in least-recently-used order."""
    return [(cache.path_of(n)[0], n.hits, n.lock_ref)
            for n in sorted(cache.nodes(), key=lambda n: (n.last_access, n.id))]


def test_insert_below_touches_the_path_as_insert_then_match():
    """A request's cache progress walks only its new tokens, yet leaves the tree as the
    whole-key insert and re-match did: same nodes, hits, locks and LRU order."""
    runs = []
    for incremental in (False, True):
        alloc = TokenSlotAllocator(64)
        cache = RadixCache(alloc.free)
        cache.insert([5, 5, 5], alloc.alloc(3))          # an older, unrelated branch
        doc = [1, 2, 3, 4, 5, 6]
        row = alloc.alloc(6)                              # the request's table row
        cache.insert(doc, row)
        _, node = cache.match_prefix(doc)
        cache.inc_lock_ref(node)
        for step, more in enumerate(([7, 8], [9], [10, 11, 12])):
            cache.match_prefix([5, 5, 5])                 # other traffic in between
            key = doc + [t for m in ([7, 8], [9], [10, 11, 12])[: step + 1] for t in m]
            new = alloc.alloc(len(more))
            if incremental:
                cached, end = cache.insert_below(node, more, new, hit=True)
                assert cached.numel() == 0
            else:                                         # as cache_progress did before
                cache.insert(key, torch.cat([row, new]))
                _, end = cache.match_prefix(key)
            row = torch.cat([row, new])
            cache.dec_lock_ref(node)
            cache.inc_lock_ref(end)
            node = end
        cache.check_integrity()
        runs.append(_shape(cache))
    assert runs[0] == runs[1]


def test_ancestor_at_splits_and_keeps_locks():
    alloc = TokenSlotAllocator(16)
    cache = RadixCache(alloc.free)
    slots = alloc.alloc(6)
    cache.insert([1, 2, 3, 4, 5, 6], slots)
    _, node = cache.match_prefix([1, 2, 3, 4, 5, 6])
    cache.inc_lock_ref(node)
    mid = cache.ancestor_at(node, 4)                      # splits the one edge after 4 tokens
    assert cache.path_of(mid)[0] == [1, 2, 3, 4]
    assert torch.equal(cache.path_of(mid)[1], slots[:4])
    assert mid.lock_ref == 1 and cache.protected_size == 6
    assert cache.ancestor_at(node, 0) is cache.root
    assert cache.ancestor_at(node, 6) is node
    cache.inc_lock_ref(mid)
    cache.dec_lock_ref(node)                              # the tail is evictable, the head held
    assert cache.evict(100) == 2 and cache.protected_size == 4
    cache.check_integrity()


def test_continuation_follows_the_tree_read_only():
    alloc = TokenSlotAllocator(POOL)
    cache = RadixCache(alloc.free)
    cache.insert([1, 2, 3, 4, 5, 6], alloc.alloc(6))
    dup = alloc.alloc(5)
    assert cache.insert([1, 2, 3, 7, 8], dup) == 3       # shares 1 2 3
    alloc.free(dup[:3])
    cache.match_prefix([1, 2, 3, 7, 8])                  # the 7 8 branch is now the most recent
    nodes = len(cache.nodes())
    assert cache.continuation([1, 2], 4) == [3, 7, 8]    # inside an edge, then the recent branch
    assert cache.continuation([1], 1) == [2]
    assert cache.continuation([1, 2, 3, 4], 9) == [5, 6]
    assert cache.continuation([1, 2, 9], 3) == [] and cache.continuation([5], 3) == []
    assert cache.continuation([1, 2, 3, 4, 5, 6], 3) == []   # a leaf: nothing after it
    _, node = cache.match_prefix([1, 2, 3])
    assert cache.continuation([4], 5, node) == [5, 6]    # below a node: key continues its path
    assert cache.continuation([], 2, node) == [7, 8]
    assert len(cache.nodes()) == nodes                   # no split, nothing inserted
    assert RadixCache(alloc.free, disabled=True).continuation([1], 3) == []
    cache.check_integrity()
