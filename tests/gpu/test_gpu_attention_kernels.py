"""Triton attention kernels against a float64 reference over a real, scattered KV pool."""
from __future__ import annotations

import random

import pytest
import torch
from gpu_common import (
    INTERPRET,
    REL_TOL,
    make_case,
    needs_gpu_or_interpreter,
    ref_attention,
    rel_err,
    usable,
)

needs_gpu_or_interpreter()
pytestmark = pytest.mark.gpu

from lmnb.runtime.attention import triton_kernels as tk
from lmnb.runtime.forward_batch import Mode

BATCHES = (1, 3, 17, 64)
GROUPS = (1, 3, 4, 8)
# (head_dim, dtype) pairs; bf16 is the model dtype, fp16 / fp32 are checked on fewer shapes
SHAPES = [(64, torch.bfloat16), (128, torch.bfloat16)]
OTHER_DTYPES = [(64, torch.float16), (128, torch.float16), (64, torch.float32),
                (128, torch.float32)]


def _heads(group: int) -> tuple[int, int]:
    kv_heads = 2 if group > 1 else 4
    return kv_heads * group, kv_heads


def _store_and_ref(case):
    b = case.batch
    case.pool.store(0, b.out_cache_loc, case.k, case.v)
    return ref_attention(case.q, case.pool.k[0], case.pool.v[0], b, case.scale)


def _poisoned(q):
    return torch.full_like(q, float("nan"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_store_kv_writes_only_target_slots(dtype):
    dtype = usable(dtype)
    case = make_case([5, 0, 9], [7, 3, 1], 8, 4, 64, dtype, seed=1)
    expect_k, expect_v = case.pool.k[0].clone(), case.pool.v[0].clone()
    loc = case.batch.out_cache_loc
    expect_k[loc], expect_v[loc] = case.k, case.v
    # a strided view, as the model's fused qkv projection would give
    k_view = torch.cat([case.k, case.k], dim=-1)[..., :64]
    tk.store_kv(case.pool.k[0], case.pool.v[0], loc, k_view, case.v)
    assert torch.equal(case.pool.k[0], expect_k)
    assert torch.equal(case.pool.v[0], expect_v)


def _decode_case(bs, group, head_dim, dtype, seed, max_len=600, lens=None):
    rng = random.Random(seed)
    lens = lens or [rng.randint(1, max_len) for _ in range(bs)]
    h, kvh = _heads(group)
    return make_case([s - 1 for s in lens], [1] * bs, h, kvh, head_dim, dtype, Mode.DECODE,
                     seed=seed)


def _run_decode(case, num_splits):
    b = case.batch
    o = _poisoned(case.q)
    tk.decode_attention(case.q, case.pool.k[0], case.pool.v[0], o, b.req_to_token,
                        b.req_pool_indices, b.seq_lens, case.scale, num_splits)
    return o


@pytest.mark.parametrize("bs", BATCHES)
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("head_dim,dtype", SHAPES)
def test_decode_matches_reference(bs, group, head_dim, dtype):
    dtype = usable(dtype)
    if INTERPRET and bs > 17:
        pytest.skip("too slow for the interpreter")
    case = _decode_case(bs, group, head_dim, dtype, seed=bs * 100 + group)
    ref = _store_and_ref(case)
    for splits in (1, 3, 8):
        assert rel_err(_run_decode(case, splits), ref) < REL_TOL[dtype], f"splits={splits}"


@pytest.mark.parametrize("head_dim,dtype", OTHER_DTYPES)
@pytest.mark.parametrize("group", (1, 4))
def test_decode_other_dtypes(head_dim, dtype, group):
    case = _decode_case(3, group, head_dim, dtype, seed=7 + group)
    ref = _store_and_ref(case)
    for splits in (1, 5):
        assert rel_err(_run_decode(case, splits), ref) < REL_TOL[dtype]


@pytest.mark.parametrize("lens", [[20000], [1, 5000], [1, 1, 2]])
def test_decode_long_and_tiny_contexts(lens):
    dtype = usable(torch.bfloat16)
    if INTERPRET and max(lens) > 5000:
        pytest.skip("too slow for the interpreter")
    case = _decode_case(len(lens), 4, 128, dtype, seed=len(lens), lens=lens)
    ref = _store_and_ref(case)
    splits = tk.decode_num_splits(len(lens), 2, max(lens), num_sms=132)
    # more splits than blocks leaves empty splits, which the merge must ignore
    for s in {1, splits, 64}:
        assert rel_err(_run_decode(case, s), ref) < REL_TOL[dtype], f"splits={s}"


@pytest.mark.parametrize("bs,group", [(1, 4), (5, 4), (17, 8)])
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_grid_orders_agree(bs, group, splits):
    """KV heads first or requests first in the grid: the same arithmetic, so the same bits."""
    dtype = usable(torch.bfloat16)
    case = _decode_case(bs, group, 128, dtype, seed=bs + splits)
    ref = _store_and_ref(case)
    b = case.batch
    outs = []
    for heads_first in (False, True):
        o = _poisoned(case.q)
        tk.decode_attention(case.q, case.pool.k[0], case.pool.v[0], o, b.req_to_token,
                            b.req_pool_indices, b.seq_lens, case.scale, splits,
                            heads_first=heads_first)
        outs.append(o)
    assert torch.equal(outs[0], outs[1])
    assert rel_err(outs[1], ref) < REL_TOL[dtype]


def _extend_case(bs, prefix, group, head_dim, dtype, seed, max_ext=140):
    rng = random.Random(seed)
    exts = [rng.randint(1, max_ext) for _ in range(bs)]
    # mixed prefixes in one batch: the given one, and a few zero / odd ones
    pres = [prefix if i % 3 == 0 else rng.choice([0, 1, prefix // 2 + 3]) for i in range(bs)]
    h, kvh = _heads(group)
    return make_case(pres, exts, h, kvh, head_dim, dtype, seed=seed)


def _run_extend(case, config=None):
    b = case.batch
    o = _poisoned(case.q)
    tk.extend_attention(case.q, case.pool.k[0], case.pool.v[0], o, b.req_to_token,
                        b.req_pool_indices, b.prefix_lens, b.extend_lens, b.extend_starts,
                        max(b.extend_lens_cpu), case.scale, config)
    return o


@pytest.mark.parametrize("bs", BATCHES)
@pytest.mark.parametrize("prefix", (0, 1, 37, 500))
@pytest.mark.parametrize("group", GROUPS)
def test_extend_matches_reference(bs, prefix, group):
    head_dim, dtype = SHAPES[(bs + prefix + group) % 2]
    dtype = usable(dtype)
    if INTERPRET and (bs > 3 or prefix > 37):
        pytest.skip("too slow for the interpreter")
    case = _extend_case(bs, prefix, group, head_dim, dtype, seed=bs * 1000 + prefix + group)
    ref = _store_and_ref(case)
    assert rel_err(_run_extend(case), ref) < REL_TOL[dtype]


@pytest.mark.parametrize("head_dim,dtype", SHAPES + OTHER_DTYPES)
@pytest.mark.parametrize("exts", [[1, 1, 1], [64, 65, 63], [300, 7, 129]])
def test_extend_lengths_and_dtypes(head_dim, dtype, exts):
    dtype = usable(dtype)
    case = make_case([37, 0, 500], exts, 8, 2, head_dim, dtype, seed=sum(exts) + head_dim)
    ref = _store_and_ref(case)
    assert rel_err(_run_extend(case), ref) < REL_TOL[dtype]


@pytest.mark.parametrize("block_m,block_n", [(64, 64), (128, 64), (64, 32), (32, 16)])
def test_extend_block_shapes(block_m, block_n):
    """Block boundaries against prefix / extend boundaries, for every config the
    backend might pick."""
    dtype = torch.float16
    case = make_case([63, 64, 65, 0], [65, 64, 1, 129], 4, 4, 64, dtype, seed=block_m + block_n)
    ref = _store_and_ref(case)
    cfg = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 2}
    assert rel_err(_run_extend(case, cfg), ref) < REL_TOL[dtype]
