"""The FP8 KV cache on the CPU: option names and errors, pool sizing, the quantization
reference, the torch backend over an FP8 pool, and the engine with FP8 KV through the
torch reference (FP8 support faked, as for FP8 weights in test_fp8.py): accuracy against
bf16 KV, radix reuse and the pool invariant, and what status shows."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import lmnb as lm
from lmnb.errors import LmnbError
from lmnb.runtime import kv_dtype
from lmnb.runtime.attention.torch_backend import TorchBackend
from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.kv_dtype import FP8_KV, FP8_MAX, dequantize_ref, quantize_ref
from lmnb.runtime.memory import KVPool, ReqToTokenPool
from lmnb.runtime.models.config import DUMMY_SHAPES, ModelConfig
from lmnb.runtime.quant import fp8
from lmnb.runtime.runtime_config import RuntimeConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("given,canonical", [(None, None), ("auto", None), ("fp8", "fp8_e4m3"),
                                             ("fp8_e4m3", "fp8_e4m3"), ("FP8_E4M3", "fp8_e4m3")])
def test_kv_cache_dtype_names(given, canonical):
    rc = RuntimeConfig(device="cuda", kv_cache_dtype=given)
    assert rc.kv_cache_dtype == canonical
    want = torch.bfloat16 if canonical is None else FP8_KV
    assert rc.kv_storage_dtype(torch.bfloat16) == want


@pytest.mark.parametrize("bad", ["int8", "fp8_e5m2", 8, "bf16"])
def test_kv_cache_dtype_rejects(bad):
    with pytest.raises(LmnbError, match="kv_cache_dtype must be None, 'auto', 'fp8_e4m3' or 'fp8'") as e:
        RuntimeConfig(device="cuda", kv_cache_dtype=bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("given", ["fp8", "fp8_e4m3"])
def test_fp8_kv_on_cpu_is_one_line_error(given):
    with pytest.raises(LmnbError, match=r"kv_cache_dtype='fp8_e4m3' needs a CUDA GPU .*"
                                        r"this runtime is on cpu; drop kv_cache_dtype") as e:
        lm.Runtime("dummy:tiny", device="cpu", kv_cache_dtype=given)
    assert "\n" not in str(e.value)


def test_pool_sizing_counts_codes_and_scales():
    """FP8: 1 byte per element + a 4-byte scale per (token, KV head, K or V): the same
    KV memory holds 2D / (D + 4) times the tokens of bf16."""
    layers, kvh, d = 32, 8, 128
    bf16 = KVPool.bytes_per_token(layers, kvh, d, torch.bfloat16)
    f8 = KVPool.bytes_per_token(layers, kvh, d, FP8_KV)
    assert bf16 == 2 * layers * kvh * d * 2 and f8 == 2 * layers * kvh * (d + 4)
    cfg = ModelConfig.from_hf(DUMMY_SHAPES["llama3-8b"])
    assert (cfg.num_layers, cfg.num_kv_heads, cfg.head_dim) == (layers, kvh, d)
    rc = RuntimeConfig(device="cpu", kv_memory_gb=1.0)
    ratio = rc.pool_tokens(cfg, FP8_KV) / rc.pool_tokens(cfg, torch.bfloat16)
    assert abs(ratio - 2 * d / (d + 4)) < 1e-3
    pool = KVPool(16, 2, 2, 64, FP8_KV, torch.device("cpu"))
    assert pool.token_bytes == KVPool.bytes_per_token(2, 2, 64, FP8_KV) == 2 * 2 * 2 * 68


# ---------------------------------------------------------------------------- numerics
def test_quantize_reference_per_row_scales():
    """Every (token, head) row keeps e4m3's relative precision whatever its magnitude:
    |x - deq| <= 2^-4 |x| (normal codes) + 2^-10 scale (subnormal codes); the row's
    largest element is coded as +-448 exactly; an all-zero row gets scale 1 and zeros."""
    g = torch.Generator().manual_seed(0)
    mags = torch.logspace(-4, 3, 50)
    x = torch.randn(50, 4, 128, generator=g) * mags[:, None, None]
    x[7, 2] = 0
    codes, scale = quantize_ref(x.to(torch.bfloat16))
    assert codes.dtype == FP8_KV and scale.dtype == torch.float32 and scale.shape == (50, 4)
    xb = x.to(torch.bfloat16).float()
    deq = dequantize_ref(codes, scale, torch.float32)
    assert ((xb - deq).abs() <= 2**-4 * xb.abs() + 2**-10 * scale[..., None]).all()
    assert torch.equal(codes.float().abs().amax(-1)[scale != 1], torch.full_like(scale[scale != 1], FP8_MAX))
    assert scale[7, 2] == 1 and not codes[7, 2].float().any()
    # a per-tensor scale of 1.0 (vLLM / SGLang's default) on the small rows: most bits gone
    small = xb[:10]
    per_tensor = small.clamp(-FP8_MAX, FP8_MAX).to(FP8_KV).float()
    assert ((per_tensor - small).norm() / small.norm()) > 0.2
    assert ((deq[:10] - small).norm() / small.norm()) < 0.05


def test_pool_store_and_read_roundtrip():
    pool = KVPool(20, 2, 3, 16, FP8_KV, torch.device("cpu"))
    assert pool.quantized and pool.k[1].dtype == FP8_KV and pool.k_scale[1].shape == (21, 3)
    k, v = torch.randn(5, 3, 16) * 0.01, torch.randn(5, 3, 16) * 50
    loc = torch.tensor([4, 9, 1, 20, 13])
    pool.store(1, loc, k, v)
    kk, vv = pool.read(1, loc, torch.float32)
    for got, x in ((kk, k), (vv, v)):
        assert torch.equal(got, dequantize_ref(*quantize_ref(x), torch.float32))
    assert pool.scales(0)[0] is pool.k_scale[0]
    plain = KVPool(20, 1, 3, 16, torch.float32, torch.device("cpu"))
    assert plain.scales(0) == (None, None) and plain.k_scale is None


def _batch(table, pre, ext, loc, mode=Mode.EXTEND):
    return ForwardBatch.build(mode, [0] * sum(ext), list(range(len(pre))), pre, ext, loc, table,
                              [sum(ext[: i + 1]) - 1 for i in range(len(ext))])


def test_torch_backend_reads_fp8_pool():
    """The torch backend over an FP8 pool computes what it computes over a plain pool that
    holds the dequantized values (extend over a prefix, then a decode step)."""
    g = torch.Generator().manual_seed(1)
    h, kvh, d = 8, 2, 32
    fp8_pool = KVPool(64, 1, kvh, d, FP8_KV, torch.device("cpu"))
    plain = KVPool(64, 1, kvh, d, torch.float32, torch.device("cpu"))
    table = ReqToTokenPool(4, 40, torch.device("cpu"))
    slots = torch.randperm(64, generator=g)[:30] + 1
    table.write(0, 0, slots[:20])
    table.write(1, 0, slots[20:30])
    backend = TorchBackend(h, kvh, d, d ** -0.5)
    # prefixes: stored in both pools (the plain one gets the dequantized rows)
    kp, vp = torch.randn(30, kvh, d, generator=g), torch.randn(30, kvh, d, generator=g)
    fp8_pool.store(0, slots, kp, vp)
    plain.k[0][slots], plain.v[0][slots] = fp8_pool.read(0, slots, torch.float32)
    for pre, ext in (([12, 4], [8, 6]), ([19, 9], [1, 1])):
        mode = Mode.DECODE if max(ext) == 1 else Mode.EXTEND
        loc = torch.cat([slots[pre[0] : pre[0] + ext[0]], slots[20 + pre[1] : 20 + pre[1] + ext[1]]])
        batch = _batch(table.table, pre, ext, loc, mode)
        q = torch.randn(sum(ext), h, d, generator=g)
        k, v = torch.randn(sum(ext), kvh, d, generator=g), torch.randn(sum(ext), kvh, d, generator=g)
        backend.init_forward(batch)
        out8 = backend.forward(q, k, v, 0, batch, fp8_pool)
        kd, vd = dequantize_ref(*quantize_ref(k), torch.float32), dequantize_ref(*quantize_ref(v), torch.float32)
        backend.init_forward(batch)
        ref = backend.forward(q, kd, vd, 0, batch, plain)
        assert torch.allclose(out8, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- engine
@pytest.fixture
def fake_fp8_device(monkeypatch):
    """FP8 'supported' on the CPU: the FP8 KV cache runs through the torch reference."""
    monkeypatch.setattr(fp8, "fp8_unsupported_reason", lambda device: None)


@pytest.fixture
def kv_pair(fake_fp8_device):
    kw = dict(device="cpu", dtype="bfloat16", kv_memory_gb=0.05, speculative="off")
    ref = lm.Runtime("dummy:tiny", **kw)
    q = lm.Runtime("dummy:tiny", kv_cache_dtype="fp8", **kw)
    yield ref, q
    q.shutdown()
    ref.shutdown()


def test_engine_fp8_kv_matches_bf16(kv_pair):
    from fp8_accuracy import compare, outside_bounds

    ref, q = kv_pair
    assert q.pool.quantized and q.pool.k[0].dtype == FP8_KV
    d = q.model_config.head_dim   # 16: scales are a larger share than at 128
    assert abs(q.pool.size / ref.pool.size - 2 * d / (d + 4)) < 0.01
    assert "kv_cache_dtype='fp8_e4m3'" in repr(q) and "KV cache fp8_e4m3" in q.describe()
    assert "KV cache bfloat16" in ref.describe()
    r = compare(ref, q, list(range(40, 72)), steps=32)
    assert r["steps"] == 32, r
    missed = outside_bounds(r, teacher_forced_agreement=0.85, mean_err_of_std=0.15)
    assert not missed, (missed, r)
    q.check_integrity()


def test_engine_fp8_kv_radix_reuse(kv_pair):
    """Cached FP8 rows are reused (on the CPU the reference is row-exact: bitwise the
    tokens of a cold run) and the pool invariant holds."""
    _, q = kv_pair
    base = list(range(100, 160))
    q.flush_cache()
    cold = q.generate([base + [1, 2]], max_new_tokens=12, temperature=0, ignore_eos=True)[0]
    warm = q.generate([base + [1, 2]], max_new_tokens=12, temperature=0, ignore_eos=True)[0]
    assert warm["meta"]["cached_tokens"] >= len(base)
    assert warm["output_ids"] == cold["output_ids"]
    outs = q.generate([base + [i] for i in range(4)], max_new_tokens=6, temperature=0, ignore_eos=True)
    assert all(o["meta"]["cached_tokens"] >= len(base) for o in outs)
    q.check_integrity()
    st = q.cache_stats()
    assert st["free_slots"] + st["cached_tokens"] == q.pool.size


def test_status_shows_kv_cache(fake_fp8_device):
    from lmnb.magics.session import KernelSession

    s = KernelSession(default_spec="dummy:tiny", device="cpu", dtype="bfloat16", kv_cache_dtype="fp8",
                      kv_memory_gb=0.05)
    try:
        s.load("dummy:tiny")
        first = s.status().splitlines()[0]
        assert "KV cache fp8_e4m3 (scale per token and KV head)" in first, first
    finally:
        s.close()


def test_backends_that_read_fp8_kv():
    """Backends say whether they dequantize; FlashInfer (per-tensor scales only) does not,
    and the Runtime then refuses in one line (checked on the GPU)."""
    from lmnb.runtime.attention.base import AttentionBackend

    assert not AttentionBackend.reads_fp8_kv and TorchBackend.reads_fp8_kv
    assert kv_dtype.label(FP8_KV) == "fp8_e4m3" and kv_dtype.label(torch.bfloat16) == "bfloat16"
