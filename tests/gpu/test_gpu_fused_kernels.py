"""Fused Triton ops (RMSNorm, residual add + RMSNorm, rotary, SiLU-and-mul) against their
torch references, on fresh random inputs, and against float64."""
from __future__ import annotations

import pytest
import torch
from gpu_common import DEVICE, REL_TOL, needs_gpu_or_interpreter, rel_err, usable

needs_gpu_or_interpreter()
pytestmark = pytest.mark.gpu

from lmnb.runtime import kernels
from lmnb.runtime.kernels.activation import silu_and_mul_triton
from lmnb.runtime.kernels.norm import add_rms_norm_triton, rms_norm_triton
from lmnb.runtime.kernels.reference import (
    add_rms_norm_ref,
    rms_norm_ref,
    rotary_ref,
    silu_and_mul_ref,
)
from lmnb.runtime.kernels.rope import rotary_triton

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _randn(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (3, 576), (17, 4096), (64, 1000), (300, 896)])
def test_rms_norm(dtype, rows, hidden):
    dtype = usable(dtype)
    x = _randn(rows, hidden, dtype=dtype, seed=rows, scale=3.0)
    w = _randn(hidden, dtype=dtype, seed=hidden) + 1
    out = rms_norm_triton(x, w, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    assert rel_err(out, rms_norm_ref(x, w, 1e-6)) < REL_TOL[dtype]
    assert rel_err(out, rms_norm_ref(x.double(), w.double(), 1e-6)) < REL_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (3, 5, 576), (64, 4096)])
def test_add_rms_norm(dtype, shape):
    dtype = usable(dtype)
    x = _randn(*shape, dtype=dtype, seed=1)
    r = _randn(*shape, dtype=dtype, seed=2, scale=4.0)
    w = _randn(shape[-1], dtype=dtype, seed=3) + 1
    y, s = add_rms_norm_triton(x, r, w, 1e-5)
    y_ref, s_ref = add_rms_norm_ref(x, r, w, 1e-5)
    assert torch.equal(s, s_ref), "the residual sum must match the unfused model exactly"
    assert rel_err(y, y_ref) < REL_TOL[dtype]


def _rope_table(max_pos, d, dtype):
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.arange(max_pos).float()[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(DEVICE, dtype), emb.sin().to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,heads,kv_heads,head_dim", [
    (1, 8, 8, 64), (3, 9, 3, 64), (17, 32, 8, 128), (64, 16, 2, 128), (200, 14, 2, 64)])
def test_rotary(dtype, tokens, heads, kv_heads, head_dim):
    dtype = usable(dtype)
    cos, sin = _rope_table(4096, head_dim, dtype)
    g = torch.Generator().manual_seed(tokens)
    positions = torch.randint(0, 4096, (tokens,), generator=g).to(DEVICE)
    # q and k as views of one fused projection, as the model produces them
    qkv = _randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, seed=tokens)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    qo, ko = rotary_triton(q, k, positions, cos, sin)
    q_ref, k_ref = rotary_ref(q, k, positions, cos, sin)
    q64, k64 = rotary_ref(q.double(), k.double(), positions, cos.double(), sin.double())
    for out, ref, ref64 in ((qo, q_ref, q64), (ko, k_ref, k64)):
        assert rel_err(out, ref) < REL_TOL[dtype]
        assert rel_err(out, ref64) < REL_TOL[dtype]
    # a half-width table gives the same result
    half = head_dim // 2
    qh, kh = rotary_triton(q, k, positions, cos[:, :half].contiguous(), sin[:, :half].contiguous())
    assert torch.equal(qh, qo) and torch.equal(kh, ko)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,heads,kv_heads,head_dim", [(1, 32, 8, 128), (5, 9, 3, 64), (64, 16, 2, 128)])
def test_rotary_store(dtype, tokens, heads, kv_heads, head_dim):
    """Rotary and the KV store in one kernel: the rotated q of rotary_triton, and the pool
    rows at the slots hold the rotated k and v (cast to the pool dtype); no other row moves."""
    from lmnb.runtime.kernels.rope import rotary_store_triton

    dtype = usable(dtype)
    cos, sin = _rope_table(4096, head_dim, dtype)
    g = torch.Generator().manual_seed(tokens + 1)
    positions = torch.randint(0, 4096, (tokens,), generator=g).to(DEVICE)
    qkv = _randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=dtype, seed=tokens + 2)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim :].view(tokens, kv_heads, head_dim)
    slots = 3 * tokens + 7
    k_buf = _randn(slots, kv_heads, head_dim, dtype=dtype, seed=3)
    v_buf = _randn(slots, kv_heads, head_dim, dtype=dtype, seed=4)
    k0, v0 = k_buf.clone(), v_buf.clone()
    loc = torch.randperm(slots, generator=g)[:tokens].to(DEVICE)
    qo = rotary_store_triton(q, k, v, positions, cos, sin, k_buf, v_buf, loc)
    q_ref, k_ref = rotary_triton(q, k, positions, cos, sin)
    assert torch.equal(qo, q_ref)
    assert torch.equal(k_buf[loc], k_ref) and torch.equal(v_buf[loc], v)
    other = torch.ones(slots, dtype=torch.bool, device=DEVICE)
    other[loc] = False
    assert torch.equal(k_buf[other], k0[other]) and torch.equal(v_buf[other], v0[other])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,inter", [(1, 64), (3, 1536), (17, 14336), (64, 1000)])
def test_silu_and_mul(dtype, rows, inter):
    dtype = usable(dtype)
    x = _randn(rows, 2 * inter, dtype=dtype, seed=rows + inter, scale=2.0)
    out = silu_and_mul_triton(x)
    assert out.shape == (rows, inter)
    assert rel_err(out, silu_and_mul_ref(x)) < REL_TOL[dtype]
    assert rel_err(out, silu_and_mul_ref(x.double())) < REL_TOL[dtype]


def test_dispatchers_pick_triton_on_cuda():
    if DEVICE.type != "cuda":
        pytest.skip("dispatch goes to the reference on CPU")
    x = _randn(4, 128, dtype=torch.bfloat16, seed=0)
    w = _randn(128, dtype=torch.bfloat16, seed=1)
    assert kernels.triton_usable(x)
    assert torch.equal(kernels.rms_norm(x, w, 1e-6), rms_norm_triton(x, w, 1e-6))
    assert torch.equal(kernels.silu_and_mul(x), silu_and_mul_triton(x))
