"""RadixCache: a radix tree over token ids whose nodes own KV slots (RadixAttention).

Ownership: every slot is exactly one of free (in the allocator), cached (in a tree node)
or in use (held by a running request and not yet inserted). Requests lock the path they
read from leaf to root; only unlocked leaves are evicted, least recently used first.

    match_prefix(key)   -> (slots of the longest cached prefix, last node); splits an edge
                           when the match ends inside it, so the node boundary is exact
    insert(key, slots)  -> length of the prefix that was already cached; the caller frees
                           its own duplicate slots for that range
    insert_below(node, key, slots) -> (cached slots of the part already there, end node)
                           for a key continuing node's path, walking only below it (a
                           request caching its newest tokens)
    ancestor_at(node, n) -> the node at n tokens up node's path (a request cut back)
    touch(node, hit)    -> mark the path root..node as just used
    continuation(key, n, node) -> up to n tokens the tree holds right after node's path +
                           key (the most recently used branch), without changing the tree
    inc/dec_lock_ref    -> protect / release the path node..root
    evict(n)            -> free at least n slots of unlocked leaves (fewer if not possible)
"""
from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

import torch

from lmnb.runtime.token_ids import common_prefix_len

_EMPTY = torch.empty(0, dtype=torch.int64)


class TreeNode:
    _ids = itertools.count()

    __slots__ = ("children", "hits", "id", "key", "last_access", "lock_ref", "parent", "value")

    def __init__(self, parent: TreeNode | None = None) -> None:
        self.id = next(TreeNode._ids)
        self.parent = parent
        self.children: dict[int, TreeNode] = {}
        self.key: list[int] = []
        self.value: torch.Tensor = _EMPTY
        self.lock_ref = 0
        self.last_access = time.monotonic()
        self.hits = 0

    def __lt__(self, other: TreeNode) -> bool:
        return self.last_access < other.last_access


class RadixCache:
    def __init__(self, free_slots: Callable[[torch.Tensor], None], disabled: bool = False) -> None:
        self._free_slots = free_slots
        self.disabled = disabled
        self.evicted_tokens = 0   # over the cache's life, flushes included: proves pressure
        self.reset()

    def reset(self) -> None:
        """Drop the tree without freeing (the caller resets the allocator too)."""
        self.root = TreeNode()
        self.root.lock_ref = 1  # the root is never evicted
        self.evictable_size = 0
        self.protected_size = 0

    # -- lookup / insert ------------------------------------------------------
    def match_prefix(self, key: list[int]) -> tuple[torch.Tensor, TreeNode]:
        if self.disabled or not key:
            return _EMPTY, self.root
        node, values, now = self.root, [], time.monotonic()
        node.last_access = now
        while key:
            child = node.children.get(key[0])
            if child is None:
                break
            n = common_prefix_len(child.key, key)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            child.hits += 1
            values.append(child.value)
            node, key = child, key[n:]
        return (torch.cat(values) if values else _EMPTY), node

    def insert(self, key: list[int], value: torch.Tensor) -> int:
        """Insert key -> slots; returns how many leading tokens were already cached."""
        return self.insert_below(self.root, key, value)[0].numel()

    def insert_below(self, node: TreeNode, key: list[int], value: torch.Tensor,
                     hit: bool = False) -> tuple[torch.Tensor, TreeNode]:
        """`insert` of a key that continues `node`'s path: `node` is in the tree (locked,
        so its path is whole) and the full key is its path followed by `key`. Only the
        part below `node` is walked: the cost is that of `key`, not of the prefix.
        Returns (the cached slots of the leading tokens of `key` that were already in the
        tree: the caller frees its duplicates value[:len], and the node whose path ends
        where the key ends). The path from the root to that node is touched as `insert`
        touches it and, with `hit`, counted as the `match_prefix` of the full key would."""
        if self.disabled:
            return _EMPTY, self.root
        cached = []
        while key:
            child = node.children.get(key[0])
            if child is None:
                leaf = TreeNode(node)
                leaf.key, leaf.value = list(key), value.clone()
                node.children[key[0]] = leaf
                self.evictable_size += len(key)
                node = leaf
                break
            n = common_prefix_len(child.key, key)
            if n < len(child.key):
                child = self._split(child, n)
            cached.append(child.value)
            node, key, value = child, key[n:], value[n:]
        self.touch(node, hit)
        return (torch.cat(cached) if len(cached) > 1 else cached[0] if cached else _EMPTY), node

    def ancestor_at(self, node: TreeNode, length: int) -> TreeNode:
        """The node whose path is the first `length` tokens of `node`'s path (an edge is
        split there), touched as `match_prefix` of that prefix touches it. `node` is in
        the tree (locked); the cost is the path's depth in nodes, not its tokens."""
        if self.disabled or length <= 0:
            return self.root
        end, n = self.path_len(node), node
        if length > end:
            raise ValueError(f"prefix of {length} tokens past the node's path of {end}")
        while end - len(n.key) >= length:
            end -= len(n.key)
            n = n.parent
        if end > length:
            n = self._split(n, len(n.key) - (end - length))
        self.touch(n, hit=True)
        return n

    def path_len(self, node: TreeNode) -> int:
        """Tokens on the path from the root to `node`."""
        total = 0
        while node is not self.root:
            total += len(node.key)
            node = node.parent
        return total

    def path_of(self, node: TreeNode) -> tuple[list[int], torch.Tensor]:
        """(tokens, slots) on the path from the root to `node` (for checks: O(path))."""
        keys, values = [], []
        while node is not self.root:
            keys.append(node.key)
            values.append(node.value)
            node = node.parent
        return ([t for k in reversed(keys) for t in k],
                torch.cat(values[::-1]) if values else _EMPTY)

    def continuation(self, key: list[int], n: int, node: TreeNode | None = None) -> list[int]:
        """Up to n tokens that follow `key` below `node` (the root by default) in the tree,
        taking the most recently used child where it branches; [] when the tree does not
        hold all of key there. Read-only: no split, no touch (speculative drafts)."""
        if self.disabled or n <= 0:
            return []
        node = self.root if node is None else node
        at, out = 0, []
        while at < len(key):
            child = node.children.get(key[at])
            if child is None:
                return []
            ck, rest = child.key, len(key) - at
            if len(ck) > rest:   # key ends inside this edge: its rest comes first
                if ck[:rest] != key[at:]:
                    return []
                out, node = ck[rest : rest + n], child
                break
            if ck != key[at : at + len(ck)]:
                return []
            node, at = child, at + len(ck)
        while len(out) < n and node.children:
            node = max(node.children.values(), key=lambda c: c.last_access)
            out += node.key[: n - len(out)]
        return out

    def touch(self, node: TreeNode, hit: bool = False) -> None:
        """Mark the path root..node as just used (and, with `hit`, count a hit on it)."""
        now = time.monotonic()
        while node is not self.root:
            node.last_access = now
            if hit:
                node.hits += 1
            node = node.parent
        node.last_access = now

    def _split(self, child: TreeNode, n: int) -> TreeNode:
        """Cut child's edge after n tokens; returns the new upper node."""
        upper = TreeNode(child.parent)
        upper.key, upper.value = child.key[:n], child.value[:n]
        upper.lock_ref, upper.last_access, upper.hits = child.lock_ref, child.last_access, child.hits
        child.parent.children[upper.key[0]] = upper
        child.key, child.value = child.key[n:], child.value[n:]
        child.parent = upper
        upper.children[child.key[0]] = child
        return upper

    # -- locking --------------------------------------------------------------
    def inc_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            if node.lock_ref == 0:
                self.evictable_size -= len(node.key)
                self.protected_size += len(node.key)
            node.lock_ref += 1
            node = node.parent

    def dec_lock_ref(self, node: TreeNode) -> None:
        while node is not self.root:
            if node.lock_ref <= 0:
                raise RuntimeError("radix cache lock underflow")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.evictable_size += len(node.key)
                self.protected_size -= len(node.key)
            node = node.parent

    # -- eviction -------------------------------------------------------------
    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens slots from unlocked leaves, LRU first. Returns freed."""
        if num_tokens <= 0:
            return 0
        heap = [n for n in self._leaves() if n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            leaf = heapq.heappop(heap)
            self._free_slots(leaf.value)
            freed += len(leaf.key)
            self.evictable_size -= len(leaf.key)
            self.evicted_tokens += len(leaf.key)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, parent)
        return freed

    def flush(self) -> int:
        """Evict everything unlocked; returns slots freed."""
        return self.evict(self.evictable_size)

    # -- inspection -----------------------------------------------------------
    def _leaves(self) -> list[TreeNode]:
        out, stack = [], [self.root]
        while stack:
            n = stack.pop()
            if not n.children and n is not self.root:
                out.append(n)
            stack.extend(n.children.values())
        return out

    def nodes(self) -> list[TreeNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def total_size(self) -> int:
        return self.evictable_size + self.protected_size

    def cached_slots(self) -> torch.Tensor:
        vals = [n.value for n in self.nodes()]
        return torch.cat(vals) if vals else _EMPTY

    def check_integrity(self) -> None:
        """Raise AssertionError if the tree's bookkeeping is inconsistent."""
        evictable = protected = 0
        for n in self.nodes():
            assert n.key, f"empty node {n.id}"
            assert len(n.key) == n.value.numel(), f"node {n.id}: key/value length mismatch"
            assert n.parent.children.get(n.key[0]) is n, f"node {n.id}: bad parent link"
            assert n.lock_ref >= 0, f"node {n.id}: negative lock"
            child_locks = sum(c.lock_ref for c in n.children.values())
            assert n.lock_ref >= child_locks, f"node {n.id}: fewer locks than its children"
            if n.lock_ref:
                protected += len(n.key)
            else:
                evictable += len(n.key)
        assert evictable == self.evictable_size, f"evictable {self.evictable_size} != {evictable}"
        assert protected == self.protected_size, f"protected {self.protected_size} != {protected}"
        slots = self.cached_slots()
        assert slots.numel() == slots.unique().numel(), "a slot is cached twice"
        assert not (slots == 0).any(), "padding slot 0 in the cache"
