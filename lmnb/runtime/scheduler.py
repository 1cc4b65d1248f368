"""Scheduler: which requests run in the next model step, and who owns which KV slot.

Pure CPU bookkeeping over the slot allocator, the req_to_token table and the radix
cache. Each step is either an EXTEND batch (new prompts, prompt chunks, tokens after a
jump-forward) or a DECODE batch (one token for every running request). With `mixed`, an
extend batch of running requests only (jump-forward text, prompt chunks) also carries the
other running requests' next tokens ("riders", last in the batch), so a jump costs the
batch no step of its own. Waiting requests
are admitted longest-cached-prefix first; a waiting request whose uncached prefix is
being computed by another request of the same batch waits one step so it reads that
prefix from the cache instead of computing it again. When the pool runs short, unlocked
cache is evicted; if that is not enough, the newest running request is retracted (its
computed tokens stay in the cache) and resumes later — requests wait, they never fail.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from lmnb.runtime.memory import ReqToTokenPool, TokenSlotAllocator
from lmnb.runtime.radix_cache import RadixCache
from lmnb.runtime.request import Req, Status
from lmnb.runtime.token_ids import common_prefix_len


@dataclass
class ScheduledBatch:
    reqs: list[Req]
    lens: list[int]           # tokens computed per request this step
    prefix_lens: list[int]    # kv_len of each request before the step
    out_cache_loc: torch.Tensor

    is_decode: bool = False
    riders: int = 0           # the last `riders` requests are decode tokens of an extend batch
    # speculative decoding: per request its Draft or None. A request with a draft computes
    # its last token and the draft tokens (lens = 1 + draft length); such a step is an
    # extend whose every position of those requests is verified
    drafts: list | None = None


class Scheduler:
    def __init__(self, allocator: TokenSlotAllocator, req_pool: ReqToTokenPool,
                 cache: RadixCache, max_prefill_tokens: int, max_running: int,
                 policy: str = "lpm", mixed: bool = False) -> None:
        self.alloc, self.req_pool, self.cache = allocator, req_pool, cache
        self.max_prefill_tokens, self.max_running, self.policy = max_prefill_tokens, max_running, policy
        self.mixed = mixed
        self.waiting: deque[Req] = deque()
        self.running: list[Req] = []
        self.new_token_ratio = self.min_ratio = 0.1
        self.max_ratio = 0.6
        self.retractions = 0
        self.hit_tokens = self.prompt_tokens = 0   # over first admissions, for the hit rate
        self.drafter = None   # speculative.Drafter: proposes drafts for decode steps

    # -- admission ------------------------------------------------------------
    def add(self, req: Req) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def next_batch(self) -> ScheduledBatch | None:
        batch = self._extend_batch()
        if batch is None and self.running:
            batch = self._decode_batch()
        if batch is None and self.running and all(r.pending > 1 for r in self.running):
            self._unblock()
            batch = self._extend_batch()
        return batch

    def _unblock(self) -> None:
        """Every running request needs several slots (prompt chunks, jump-forward tokens)
        and the pool is held by the running requests themselves: nothing would ever run
        again. Retract the newest; its KV becomes evictable cache and the others go on."""
        self.retract(self.running[-1])
        self.new_token_ratio = min(self.max_ratio, self.new_token_ratio + 0.1)

    def _extend_batch(self) -> ScheduledBatch | None:
        budget = self.max_prefill_tokens
        picked: list[tuple[Req, int]] = []
        # running requests with several pending tokens (prompt chunks, jump-forward) first
        for r in self.running:
            if r.pending > 1 and budget > 0:
                taken = sum(k for _, k in picked)
                self._ensure_free(taken + min(r.pending, budget))
                n = min(r.pending, budget, self.alloc.available() - taken)
                if n <= 0:
                    break
                picked.append((r, n))
                budget -= n
        riders: list[tuple[Req, int]] = []
        if self.waiting and budget > 0:
            picked += self._admit(budget, sum(k for _, k in picked))
        elif picked and self.mixed:   # running requests only: the others' next tokens ride along
            riders = [(r, 1) for r in self.running if r.pending == 1]   # picked ones have more
            if riders and self.alloc.available() < sum(k for _, k in picked) + len(riders):
                riders = []   # no room without evicting: they wait for their decode step
        if not picked:
            return None
        if not riders and all(n == 1 and _decodes_next(r) for r, n in picked):
            # only last prompt tokens (a re-run whose prompt is cached): a decode step, so
            # it may carry drafts (the cached continuation) instead of costing one more step
            drafts = self._drafts([r for r, _ in picked])
            if drafts is not None:
                batch = self._materialize([(r, 1 + (len(d.tokens) if d else 0))
                                           for (r, _), d in zip(picked, drafts)])
                batch.drafts = drafts
                return batch
        batch = self._materialize(picked + riders)
        batch.riders = len(riders)
        return batch

    def _admit(self, budget: int, taken: int) -> list[tuple[Req, int]]:
        candidates = list(self.waiting)
        if self.policy == "lpm" and len(candidates) <= 1024:
            for r in candidates:
                self._match(r)
            candidates.sort(key=lambda r: -r.cache_len)
        picked: list[tuple[Req, int]] = []
        new_ids = _PrefixSet()
        reserve = self._decode_reserve()
        for r in candidates:
            if budget <= 0 or len(self.running) >= self.max_running:
                break
            if _waits_for_leader(r):
                continue
            self._match(r)  # again: evictions for earlier picks may have cut its path
            ids = r.fill_ids[: r.fill_len - 1]
            if len(ids) > r.cache_len + 32 and new_ids.longest(ids) > r.cache_len + 32:
                continue  # its prefix is being computed right now: read it from cache next step
            n = min(r.fill_len - r.cache_len, budget)
            want = taken + n + reserve + int(min(r.params.max_new_tokens, 4096) * self.new_token_ratio)
            self.cache.inc_lock_ref(r.last_node)
            idx = self.req_pool.alloc()
            alone = not picked and not self.running
            if idx is None or not self._ensure_free(want, allow_short=alone, need=taken + n):
                if idx is not None:
                    self.req_pool.free(idx)
                self.cache.dec_lock_ref(r.last_node)
                break
            self._start(r, idx)
            picked.append((r, n))
            new_ids.add(ids)
            budget -= n
            taken += n
        return picked

    def _match(self, r: Req) -> None:
        limit = r.fill_len - 1
        if r.logprob_from >= 0:
            limit = min(limit, r.logprob_from)
        slots, node = self.cache.match_prefix(r.fill_ids[:limit])
        r.last_node, r.cache_len, r.prefix_slots = node, slots.numel(), slots

    def _start(self, r: Req, idx: int) -> None:
        self.waiting.remove(r)
        r.req_pool_idx, r.kv_len, r.status = idx, r.cache_len, Status.RUNNING
        self.req_pool.write(idx, 0, r.prefix_slots)
        r.prefix_slots = None
        if r.cached_tokens < 0:
            r.cached_tokens = r.cache_len
            self.hit_tokens += r.cache_len
            self.prompt_tokens += len(r.input_ids)
        self.running.append(r)

    def _decode_reserve(self) -> int:
        left = sum(max(0, r.params.max_new_tokens - len(r.output_ids)) for r in self.running)
        return int(left * self.new_token_ratio)

    def _ensure_free(self, want: int, allow_short: bool = False, need: int | None = None) -> bool:
        """Make `want` slots free (evicting cache); if allow_short, `need` is enough."""
        short = want - self.alloc.available()
        if short > 0:
            self.cache.evict(short)
        if self.alloc.available() >= want:
            return True
        return allow_short and self.alloc.available() >= (need if need is not None else want)

    # -- decode ---------------------------------------------------------------
    def _decode_batch(self) -> ScheduledBatch | None:
        reqs = [r for r in self.running if r.pending == 1]
        while reqs and not self._ensure_free(len(reqs)):
            victim = reqs.pop()
            self.retract(victim)
            self.new_token_ratio = min(self.max_ratio, self.new_token_ratio + 0.1)
        if not reqs:
            return None
        self.new_token_ratio = max(self.min_ratio, self.new_token_ratio - 0.001)
        drafts = self._drafts(reqs)
        if drafts is None:
            batch = self._materialize([(r, 1) for r in reqs])
            batch.is_decode = True
            return batch
        batch = self._materialize([(r, 1 + (len(d.tokens) if d else 0)) for r, d in zip(reqs, drafts)])
        batch.drafts = drafts
        return batch

    def _drafts(self, reqs: list[Req]) -> list | None:
        """Drafts for a decode batch's requests, or None when none has one (or the pool
        has no room for their extra tokens, even after evicting unlocked cache: drafts
        never retract a request). A full cache is the steady state of a long session, so
        drafts may evict its least recently used leaves, as a decode step does."""
        if self.drafter is None:
            return None
        drafts = self.drafter.drafts(reqs)
        extra = sum(len(d.tokens) for d in drafts if d is not None)
        if not extra:
            return None
        if not self._ensure_free(len(reqs) + extra):
            return None
        return drafts

    def _materialize(self, picked: list[tuple[Req, int]]) -> ScheduledBatch:
        total = sum(n for _, n in picked)
        locs = self.alloc.alloc(total)
        if locs is None:  # _ensure_free guaranteed room
            raise RuntimeError("KV allocator short after reservation")
        lens = [n for _, n in picked]
        prefix_lens = [r.kv_len for r, _ in picked]
        rows = np.repeat([r.req_pool_idx for r, _ in picked], lens)
        # column of each new token: its request's kv_len plus its offset in the step
        cols = np.arange(total) - np.repeat(np.cumsum(lens) - lens - prefix_lens, lens)
        for r, n in picked:
            r.kv_len += n  # the step writes their KV; the request owns the slots from now
        self.req_pool.write_many(torch.from_numpy(rows), torch.from_numpy(cols), locs)  # one copy
        return ScheduledBatch([r for r, _ in picked], lens, prefix_lens, locs)

    # -- release --------------------------------------------------------------
    def cache_progress(self, r: Req) -> None:
        """Insert the request's computed tokens into the cache and hold them from there.
        Only the tokens past its cached prefix are walked and read (its locked path
        already holds the rest): a jump-forward extend over a long document costs its
        own tokens, not the document's."""
        if self.cache.disabled:
            return
        start, idx = r.cache_len, r.req_pool_idx
        own = self.req_pool.read(idx, start, r.kv_len)
        cached, node = self.cache.insert_below(r.last_node, r.fill_slice(start, r.kv_len), own,
                                               hit=True)
        if cached.numel():   # another request cached these first: hold its slots, free ours
            self.alloc.free(own[: cached.numel()])
            self.req_pool.write(idx, start, cached)
        self.cache.dec_lock_ref(r.last_node)
        self.cache.inc_lock_ref(node)
        r.last_node, r.cache_len = node, r.kv_len

    def release(self, r: Req) -> None:
        """Give back everything the request holds; computed KV stays in the cache."""
        if r.req_pool_idx is None:
            return
        if r.kv_len > r.fill_len:   # a draft's KV, its tokens not accepted (finished mid-verify)
            self.alloc.free(self.req_pool.read(r.req_pool_idx, r.fill_len, r.kv_len))
            r.kv_len = r.fill_len
        if r.kv_len > r.cache_len:
            own = self.req_pool.read(r.req_pool_idx, r.cache_len, r.kv_len)
            if self.cache.disabled:
                self.alloc.free(own)
            else:
                cached, _ = self.cache.insert_below(r.last_node, r.fill_slice(r.cache_len, r.kv_len), own)
                self.alloc.free(own[: cached.numel()])
        elif r.kv_len and not self.cache.disabled:
            self.cache.touch(r.last_node)   # as inserting its whole tokens would
        self.cache.dec_lock_ref(r.last_node)
        self.req_pool.free(r.req_pool_idx)
        r.req_pool_idx, r.last_node, r.kv_len, r.cache_len = None, None, 0, 0
        if r in self.running:
            self.running.remove(r)

    def retract(self, r: Req) -> None:
        self.release(r)
        r.status = Status.WAITING
        r.retractions += 1
        self.retractions += 1
        self.waiting.appendleft(r)

    def drop_waiting(self, r: Req) -> None:
        if r in self.waiting:
            self.waiting.remove(r)

    def rollback(self, r: Req, keep: int) -> None:
        """Forget the KV of positions >= keep after the caller changed fill_ids there
        (re-tokenization at a jump-forward boundary, rejected draft tokens)."""
        if keep >= r.kv_len:
            return
        own = self.req_pool.read(r.req_pool_idx, r.cache_len, r.kv_len)
        if keep >= r.cache_len:
            self.alloc.free(own[keep - r.cache_len :])
            r.kv_len = keep
            return
        # the change reaches into the cached part: hold the cached path only up to keep
        # (fill_ids[:keep] is unchanged, so that is the path a match of it would find, and
        # the request's table row already holds its slots)
        self.alloc.free(own)
        self.cache.dec_lock_ref(r.last_node)
        node = self.cache.ancestor_at(r.last_node, keep)
        self.cache.inc_lock_ref(node)
        r.last_node, r.cache_len, r.kv_len = node, keep, keep

    # -- accounting -----------------------------------------------------------
    def in_use_slots(self) -> torch.Tensor:
        held = [self.req_pool.read(r.req_pool_idx, r.cache_len, r.kv_len)
                for r in self.running if r.req_pool_idx is not None]
        return torch.cat(held) if held else torch.empty(0, dtype=torch.int64)

    def check_integrity(self) -> None:
        """free + cached + in-use == pool size, with no slot counted twice; each running
        request's locked path is its first cache_len tokens, and its table row holds that
        path's slots (what incremental caching and cut-backs rely on)."""
        self.cache.check_integrity()
        for r in self.running:
            if r.req_pool_idx is None or self.cache.disabled:
                continue
            keys, slots = self.cache.path_of(r.last_node)
            assert len(keys) == r.cache_len <= r.kv_len, f"{r.rid}: path {len(keys)} != cache_len {r.cache_len}"
            assert keys == r.fill_slice(0, r.cache_len), f"{r.rid}: cached path is not its tokens"
            assert torch.equal(slots, self.req_pool.read(r.req_pool_idx, 0, r.cache_len)), \
                f"{r.rid}: table row differs from its cached path"
        free, cached, used = self.alloc.free_slots(), self.cache.cached_slots(), self.in_use_slots()
        total = free.numel() + cached.numel() + used.numel()
        assert total == self.alloc.size, (
            f"free {free.numel()} + cached {cached.numel()} + in-use {used.numel()} != pool {self.alloc.size}")
        every = torch.cat([free, cached, used])
        assert every.unique().numel() == self.alloc.size, "a KV slot is owned twice"
        assert every.min() >= 1 and every.max() <= self.alloc.size, "slot out of range"
        assert self.req_pool.available() + sum(r.req_pool_idx is not None for r in self.running) \
            == self.req_pool.max_reqs, "req_to_token rows leaked"


def _waits_for_leader(r: Req) -> bool:
    """A sample of an n > 1 request waits until the first sample's prompt KV is in the
    radix cache (it is inserted when the step computing it is launched)."""
    lead = r.prompt_leader
    if lead is None or lead.finished():
        return False
    return lead.status is Status.WAITING or lead.kv_len < len(lead.input_ids) - 1


class _PrefixSet:
    """Token sequences admitted in this step, as a compressed trie (edges are id lists):
    the longest prefix a candidate shares with any of them costs one walk, not one
    comparison per admitted request (hundreds of waiting x hundreds of admitted requests
    made admission quadratic), and each edge is compared by slices, in C, rather than
    token by token (a 3k-token document was 3k dict operations per admitted request)."""

    def __init__(self) -> None:
        self.root: dict[int, list] = {}   # first id -> [edge ids, children]

    def add(self, ids: list[int]) -> None:
        children, ids = self.root, list(ids)
        while ids:
            edge = children.get(ids[0])
            if edge is None:
                children[ids[0]] = [ids, {}]
                return
            n = common_prefix_len(edge[0], ids)
            if n < len(edge[0]):   # split the edge where the new sequence leaves it
                edge[0], edge[1] = edge[0][:n], {edge[0][n]: [edge[0][n:], edge[1]]}
            children, ids = edge[1], ids[n:]

    def longest(self, ids: list[int]) -> int:
        children, total = self.root, 0
        while ids:
            edge = children.get(ids[0])
            if edge is None:
                break
            n = common_prefix_len(edge[0], ids)
            total += n
            if n < len(edge[0]):
                break
            children, ids = edge[1], ids[n:]
        return total


def _decodes_next(r: Req) -> bool:
    """True when r's one pending token is its last prompt token and nothing but its next
    token is wanted from that position (no prompt logprobs, no images): computing it is
    a decode row."""
    return r.pending == 1 and r.logprob_from < 0 and r.mm is None and not r.output_ids
