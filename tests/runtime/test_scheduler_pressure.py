"""Scheduler under a full pool, driven step by step without a model: it must always find
something to run while requests are running, and keep the integrity invariant."""
from __future__ import annotations

import torch

from lmnb.runtime.memory import ReqToTokenPool, TokenSlotAllocator
from lmnb.runtime.radix_cache import RadixCache
from lmnb.runtime.request import Req, Status
from lmnb.runtime.sampling_params import SamplingParams
from lmnb.runtime.scheduler import Scheduler


def make_scheduler(pool: int, max_running: int = 8, chunk: int = 64) -> Scheduler:
    alloc = TokenSlotAllocator(pool)
    cache = RadixCache(alloc.free)
    return Scheduler(alloc, ReqToTokenPool(max_running + 1, 64, torch.device("cpu")), cache, chunk, max_running)


def request(rid: str, prompt: list[int], max_new: int) -> Req:
    return Req(rid, prompt, SamplingParams.make(max_new_tokens=max_new))


def after_step(s: Scheduler, batch) -> None:
    """What the engine does after an extend step whose requests took no token yet."""
    for r in batch.reqs:
        if r.kv_len > r.cache_len:
            s.cache_progress(r)


def test_running_requests_that_all_wait_for_slots_are_unblocked():
    """Two requests fill the pool, then both get several pending tokens at once (as after
    a jump-forward): one of them must be retracted so the other can go on."""
    s = make_scheduler(pool=20)
    a, b = request("a", list(range(3, 13)), 8), request("b", list(range(20, 30)), 8)
    s.add(a)
    s.add(b)
    batch = s.next_batch()
    assert batch.reqs == [a, b] and s.alloc.available() == 0
    after_step(s, batch)
    for r in (a, b):
        r.output_ids += [40, 41, 42]   # a forced span: three tokens without KV yet
    batch = s.next_batch()
    assert batch is not None, "every running request waits for slots: nothing ever runs again"
    assert batch.reqs == [a] and batch.lens == [3]
    assert b.status is Status.WAITING and s.retractions == 1
    s.check_integrity()
    after_step(s, batch)
    s.release(a)                      # a finishes; b resumes with its forced tokens
    batch = s.next_batch()
    assert batch.reqs == [b] and batch.prefix_lens[0] + batch.lens[0] == 13
    s.check_integrity()


def test_lone_request_with_pending_tokens_always_runs():
    s = make_scheduler(pool=12)
    r = request("r", list(range(3, 13)), 2)
    s.add(r)
    after_step(s, s.next_batch())
    r.output_ids += [50]
    batch = s.next_batch()
    assert batch.reqs == [r] and batch.is_decode
    s.check_integrity()


def test_request_sharing_an_uncached_prefix_waits_one_step_to_read_it():
    """Admission looks up the prompts admitted in the same step: a request whose long
    uncached prefix is being computed right now waits and then reads it from the cache."""
    s = make_scheduler(pool=400)
    shared = list(range(3, 53))
    first, twin, other = (request("a", shared + [60, 61], 4), request("b", shared + [70, 71, 72], 4),
                          request("c", list(range(100, 160)), 4))
    for r in (first, twin, other):
        s.add(r)
    batch = s.next_batch()
    assert set(batch.reqs) == {first, other} and twin.status is Status.WAITING
    after_step(s, batch)
    batch = s.next_batch()
    assert twin in batch.reqs and twin.cache_len >= len(shared)
    s.check_integrity()


def test_regex_requests_jumping_forward_in_a_full_pool_all_finish():
    """Through the engine: eight regex programs whose forced span arrives while the pool
    is full of their own prompts. They all used to stall for good (the engine spun
    without a batch); now they finish with the outputs of a large pool."""
    from concurrent.futures import ThreadPoolExecutor

    import lmnb as lm

    rx = r"[a-z]-abcdefghijklmnop-[a-z]{2}"
    prompts = [f"P{i:02d}:" + "x" * 20 for i in range(8)]
    with lm.Runtime("dummy:tiny", device="cpu", max_total_tokens=1000) as big:
        want = [o["text"] for o in big.generate(prompts, max_new_tokens=30, regex=rx, temperature=0)]
    with lm.Runtime("dummy:tiny", device="cpu", max_total_tokens=60) as rt, ThreadPoolExecutor(1) as ex:
        handles = [rt.submit(p, max_new_tokens=30, regex=rx, temperature=0) for p in prompts]
        fut = ex.submit(lambda: [h.result()["text"] for h in handles])
        try:
            got = fut.result(timeout=60)
        finally:
            for h in handles:
                h.abort()
        assert got == want
        assert rt.cache_stats()["retractions"] > 0
        rt.check_integrity()


def test_jump_extends_cache_only_their_own_tokens():
    """A jump-forward extend over a long prompt caches the forced tokens below the
    request's locked path: the path then spells the whole computed text, the table row
    holds its slots, and a twin that computed the same tokens alongside holds the cached
    slots instead of its own duplicates."""
    s = make_scheduler(pool=200)
    doc = list(range(3, 43))
    a, b = request("a", doc + [50], 16), request("b", doc + [50], 16)
    s.add(a)
    after_step(s, s.next_batch())                     # a computes the document
    s.add(b)
    after_step(s, s.next_batch())                     # b reads it from the cache
    assert b.cached_tokens == len(doc)
    reads = []
    read = s.req_pool.read
    s.req_pool.read = lambda idx, lo, hi: reads.append(hi - lo) or read(idx, lo, hi)
    for r in (a, b):
        r.output_ids += [60, 61, 62, 63]              # the same forced text for both
    batch = s.next_batch()
    assert batch.lens == [4, 4]
    free_before = s.alloc.available()
    after_step(s, batch)
    assert reads == [4, 4], "only the tokens past the cached prefix are read"
    assert s.alloc.available() == free_before + 4, "the second request's duplicates are freed"
    for r in (a, b):
        assert r.cache_len == r.kv_len == len(doc) + 5   # the prompt's last token, the text
    assert a.last_node is b.last_node
    s.check_integrity()
    for r in (a, b):
        s.release(r)
    s.check_integrity()
    assert s.alloc.available() + s.cache.total_size() == 200


def test_rollback_into_cached_tokens_cuts_the_locked_path():
    """Re-tokenization at a jump boundary may change a token that an extend already
    cached: the request then holds its cached path only up to the kept tokens, and
    computes the new ones from there."""
    s = make_scheduler(pool=200)
    r = request("r", list(range(3, 33)), 16)
    s.add(r)
    after_step(s, s.next_batch())
    r.output_ids += [70, 71, 72, 73]
    after_step(s, s.next_batch())                     # forced tokens computed and cached
    assert r.cache_len == r.kv_len == 34
    keep = 32                                         # the last two forced tokens re-tokenized
    r.output_ids[2:] = [80, 81, 82]
    s.rollback(r, keep)
    assert r.cache_len == r.kv_len == keep
    assert s.cache.path_of(r.last_node)[0] == r.fill_ids[:keep]
    s.check_integrity()
    batch = s.next_batch()
    assert batch.reqs == [r] and batch.prefix_lens == [keep] and batch.lens == [3]
    after_step(s, batch)
    assert s.cache.path_of(r.last_node)[0] == r.fill_ids
    s.check_integrity()
    s.release(r)
    s.check_integrity()
    # both spellings stay cached: the old one is an unlocked branch now
    assert s.cache.match_prefix(list(range(3, 33)) + [70, 71, 72, 73])[0].numel() == 34
    assert s.alloc.available() + s.cache.total_size() == 200


def test_prefix_set_finds_the_longest_shared_prefix():
    """Admission's set of this step's prompts: the longest prefix a candidate shares with
    any admitted sequence, as a scan over all of them would find it."""
    import random

    from lmnb.runtime.scheduler import _PrefixSet

    rng = random.Random(1)
    for _ in range(200):
        admitted, ps = [], _PrefixSet()
        base = [rng.randrange(3) for _ in range(30)]
        for _ in range(rng.randrange(0, 6)):
            seq = base[: rng.randrange(0, 31)] + [rng.randrange(3) for _ in range(rng.randrange(0, 20))]
            ps.add(seq)
            admitted.append(seq)
        for _ in range(10):
            cand = base[: rng.randrange(0, 31)] + [rng.randrange(3) for _ in range(rng.randrange(0, 20))]
            naive = 0
            for seq in admitted:
                n = 0
                while n < min(len(seq), len(cand)) and seq[n] == cand[n]:
                    n += 1
                naive = max(naive, n)
            assert ps.longest(cand) == naive
