"""CPU attention reads a request's K/V in place when its slots are one range: the result
is bitwise the gathered (and, for one decode request, the masked) computation's, on fresh
random inputs. The allocator hands out ascending slots so that a request decoding alone
keeps one range. Below ROW_EXACT_ROWS rows a step computes every row as a decode step of
its own request would: a short extend (a verified draft) row by row, and a decode batch
request by request, bitwise."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmnb.runtime.attention import create_backend, torch_backend
from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool, ReqToTokenPool, TokenSlotAllocator

H, KVH, D, LAYERS = 6, 2, 32, 2


def _setup(seed: int):
    g = torch.Generator().manual_seed(seed)
    pool = KVPool(512, LAYERS, KVH, D, torch.float32, torch.device("cpu"))
    for buf in pool.k + pool.v:
        buf.copy_(torch.randn(buf.shape, generator=g))
    req_pool = ReqToTokenPool(4, 256, torch.device("cpu"))
    backend = create_backend("torch", "cpu", num_heads=H, num_kv_heads=KVH, head_dim=D, scale=D ** -0.5)
    return g, pool, req_pool, backend


def _run(backend, pool, batch, qkv):
    backend.init_forward(batch)
    return [backend.forward(q, k, v, layer, batch, pool) for layer, (q, k, v) in enumerate(qkv)]


def _qkv(g, t):
    return [tuple(torch.randn(t, n, D, generator=g) for n in (H, KVH, KVH)) for _ in range(LAYERS)]


def _pools_equal(a: KVPool, b: KVPool) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.k + a.v, b.k + b.v))


def _clone(pool: KVPool) -> KVPool:
    other = KVPool(pool.size, LAYERS, KVH, D, pool.dtype, pool.device)
    for a, b in zip(other.k + other.v, pool.k + pool.v):
        a.copy_(b)
    return other


@pytest.mark.parametrize("prefix,ext,seed", [(0, 7, 0), (40, 1, 1), (100, 5, 2), (0, 130, 3)])
def test_in_place_reads_equal_gathers(monkeypatch, prefix, ext, seed):
    g, pool, req_pool, backend = _setup(seed)
    slots = torch.arange(200, 200 + prefix + ext)           # one range
    req_pool.write(1, 0, slots)
    mode = Mode.DECODE if ext == 1 else Mode.EXTEND
    batch = lambda: ForwardBatch.build(mode, [0] * ext, [1], [prefix], [ext],  # noqa: E731
                                       slots[prefix:], req_pool.table, list(range(ext)))
    qkv = _qkv(g, ext)
    gathered_pool = _clone(pool)
    fast = _run(backend, pool, batch(), qkv)
    b = batch()
    backend.init_forward(b)
    assert b.attn_state[0][0] is not None, "one slot range was not recognised"
    monkeypatch.setattr(torch_backend, "contiguous_range", lambda s: None)
    slow = _run(backend, gathered_pool, batch(), qkv)
    assert all(torch.equal(a, c) for a, c in zip(fast, slow))
    assert _pools_equal(pool, gathered_pool)
    if mode is Mode.DECODE:   # and the padded/masked form the batched decode uses
        for layer, (q, _, _) in enumerate(qkv):
            kk = pool.k[layer][slots].transpose(0, 1)[None]
            vv = pool.v[layer][slots].transpose(0, 1)[None]
            mask = torch.ones(1, 1, 1, slots.numel(), dtype=torch.bool)
            ref = F.scaled_dot_product_attention(q.reshape(1, KVH, H // KVH, D), kk, vv,
                                                 attn_mask=mask, scale=D ** -0.5)
            assert torch.equal(fast[layer], ref.reshape(1, H, D))


def test_scattered_slots_are_gathered():
    assert torch_backend.contiguous_range(torch.tensor([5, 6, 8, 9])) is None   # same span, a gap
    assert torch_backend.contiguous_range(torch.tensor([5, 7, 6, 8])) is None
    assert torch_backend.contiguous_range(torch.tensor([9, 8])) is None
    assert torch_backend.contiguous_range(torch.tensor([4])) == (4, 5)
    assert torch_backend.contiguous_range(torch.tensor([4, 5, 6])) == (4, 7)


def test_allocator_hands_out_ascending_slots_and_reuses_the_lowest():
    a = TokenSlotAllocator(10)
    first, second, third = a.alloc(3), a.alloc(1), a.alloc(2)
    assert torch.cat([first, second, third]).tolist() == [1, 2, 3, 4, 5, 6]
    a.free(first)
    assert a.alloc(2).tolist() == [1, 2] and a.alloc(1).tolist() == [3]
    assert a.alloc(5) is None and a.available() == 4
    assert sorted(a.free_slots().tolist()) == [7, 8, 9, 10]


def _decode_alone(backend, pool, req_pool, row: int, n: int, q_row, layer: int):
    """What a decode step of request `row` alone computes for its position n - 1."""
    b = ForwardBatch.build(Mode.DECODE, [0], [row], [n - 1], [1],
                           req_pool.table[row, n - 1 : n].long(), req_pool.table, [0])
    backend.init_forward(b)
    kbuf, vbuf = pool.k[layer], pool.v[layer]
    slot = b.out_cache_loc
    k_now, v_now = kbuf[slot].clone(), vbuf[slot].clone()   # the step stores them again
    return backend.forward(q_row[None], k_now, v_now, layer, b, pool)[0]


@pytest.mark.parametrize("prefix,ext,scattered,seed", [(30, 9, False, 4), (57, 15, True, 5),
                                                       (1, 4, True, 6)])
def test_a_short_extend_computes_each_row_as_a_decode_step(prefix, ext, scattered, seed):
    assert ext < torch_backend.ROW_EXACT_ROWS
    g, pool, req_pool, backend = _setup(seed)
    n = prefix + ext
    slots = torch.randperm(500, generator=g)[:n] + 1 if scattered else torch.arange(100, 100 + n)
    req_pool.write(2, 0, slots)
    qkv = _qkv(g, ext)
    batch = ForwardBatch.build(Mode.EXTEND, [0] * ext, [2], [prefix], [ext], slots[prefix:],
                               req_pool.table, list(range(ext)))
    outs = _run(backend, pool, batch, qkv)   # stores the step's K/V, then attends
    for layer, (q, _, _) in enumerate(qkv):
        for j in range(ext):
            alone = _decode_alone(backend, pool, req_pool, 2, prefix + j + 1, q[j], layer)
            assert torch.equal(outs[layer][j], alone), (layer, j)


def test_a_decode_batch_computes_each_request_as_if_alone():
    g, pool, req_pool, backend = _setup(7)
    lens = [40, 3, 77, 12]
    start = 1
    for row, n in enumerate(lens):
        req_pool.write(row, 0, torch.arange(start, start + n))
        start += n + 3
    locs = torch.stack([req_pool.table[row, n - 1].long() for row, n in enumerate(lens)])
    qkv = _qkv(g, len(lens))
    batch = ForwardBatch.build(Mode.DECODE, [0] * len(lens), list(range(len(lens))),
                               [n - 1 for n in lens], [1] * len(lens), locs, req_pool.table,
                               list(range(len(lens))))
    outs = _run(backend, pool, batch, qkv)
    for layer, (q, _, _) in enumerate(qkv):
        for row, n in enumerate(lens):
            assert torch.equal(outs[layer][row], _decode_alone(backend, pool, req_pool, row, n, q[row], layer))
