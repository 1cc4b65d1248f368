"""lmnb's own CPU kernels (`quant/cpu_kernels.c`), on fresh random inputs:

- the int4/int8 matmuls equal a torch reference of the same math (activations quantized
  per group of 32, exact integer dots), and a call's rows are bitwise each row alone,
  with one thread or two; the repacked weight layouts round-trip;
- the fused decode step gives the per-layer path's logits and KV (same weights, torch
  attention), and is row-exact: a decode batch gives each request's step alone, and a
  verify extend of k rows gives k single decode steps, bitwise;
- the fused step's attention equals a float64 reference at contexts around its key block
  and work unit, a row's result is the same bits alone or in any step, with any thread
  count, and the AVX-512, AVX2 and portable C builds give the same bits;
- without a C compiler (or with LMNB_CPU_KERNELS=torch) the runtime says so and runs on
  torch's kernels.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool, ReqToTokenPool
from lmnb.runtime.models.config import ModelConfig
from lmnb.runtime.models.llama import LlamaForCausalLM
from lmnb.runtime.quant import cpu_kernels
from lmnb.runtime.quant.cpu_linear import QuantLinear, dequantize_int4_min, quantize_int4_min

kernels = cpu_kernels.load()
pytestmark = pytest.mark.skipif(kernels is None, reason=f"no lmnb CPU kernels: {cpu_kernels.status()}")


def _reference(lin: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The kernels' math in torch: per-group int8 activations, exact integer dot products."""
    xq, xd, xs = kernels.quant_rows(x)
    r, k = x.shape
    g = k // cpu_kernels.GROUP
    n = lin.out_features
    if lin.bits == 4:
        codes = cpu_kernels.unpack_q4(lin.qweight, n, k).view(n, g, 32)
        dots = torch.einsum("ngi,rgi->rng", codes.double(), xq.view(r, g, 32).double())
        scales, mins = cpu_kernels.unpack_cols(lin.scales), cpu_kernels.unpack_cols(lin.mins)
        y = (dots * scales.double()[None] * xd.double()[:, None]).sum(-1) \
            + (mins.double()[None] * xs.double()[:, None]).sum(-1)   # fp16 -> exact in double
    else:
        dots = torch.einsum("ngi,rgi->rng", cpu_kernels.unpack_q8(lin.qweight, n, k).view(n, g, 32).double(),
                            xq.view(r, g, 32).double())
        y = (dots * xd.double()[:, None]).sum(-1) * lin.scales.double()[None]
    if lin.bias is not None:
        y = y + lin.bias.double()
    return y.float()


def test_activation_quantization_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 256, generator=g) * torch.rand(5, 256, generator=g) * 4
    x[1, 32:64] = 0.0   # an all-zero group
    xq, xd, xs = kernels.quant_rows(x)
    grp = x.view(5, 8, 32)
    d = grp.abs().amax(-1) / 127.0
    inv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    assert torch.equal(xd, d)
    assert torch.equal(xq.view(5, 8, 32), torch.round(grp * inv[..., None]).to(torch.int8))
    assert torch.allclose(xs, grp.sum(-1), atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", [(96, 64), (320, 192), (48, 544)])
def test_matmul_equals_the_reference_and_rows_are_independent(bits, shape):
    n, k = shape
    g = torch.Generator().manual_seed(n + k + bits)
    lin = QuantLinear(torch.randn(n, k, generator=g) * 0.1, torch.randn(n, generator=g), bits,
                      dense=False, kernels=kernels)
    assert lin.kernels is kernels
    threads = torch.get_num_threads()
    try:
        for rows in (1, 2, 3, 4, 5, 15):
            x = torch.randn(rows, k, generator=g)
            y = lin(x)
            ref = _reference(lin, x)
            assert torch.allclose(y, ref, rtol=1e-5, atol=1e-4), (y - ref).abs().max()
            alone = torch.cat([lin(x[i:i + 1]) for i in range(rows)])
            assert torch.equal(y, alone)
            torch.set_num_threads(1)
            assert torch.equal(lin(x), y)
            torch.set_num_threads(threads)
    finally:
        torch.set_num_threads(threads)


def test_int8_columns_past_the_last_block_of_16():
    """An int8 layer whose outputs are not a multiple of 16 (a vocabulary, say): the last
    columns form a narrower block, computed by the same lane operations."""
    g = torch.Generator().manual_seed(5)
    for n, k in [(50, 96), (7, 32), (16 * 3 + 15, 544)]:
        lin = QuantLinear(torch.randn(n, k, generator=g) * 0.1, torch.randn(n, generator=g), 8,
                          dense=False, kernels=kernels)
        for rows in (1, 4, 15):
            x = torch.randn(rows, k, generator=g)
            y = lin(x)
            assert torch.allclose(y, _reference(lin, x), rtol=1e-5, atol=1e-4)
            assert torch.equal(y, torch.cat([lin(x[i:i + 1]) for i in range(rows)]))


def test_the_repacked_layouts_round_trip():
    g = torch.Generator().manual_seed(9)
    n, k = 48, 160
    codes = torch.randint(0, 16, (n, k), generator=g)
    assert torch.equal(cpu_kernels.unpack_q4(cpu_kernels.pack_q4(codes), n, k).long(), codes)
    scales = torch.rand(n, k // 32, generator=g).half()
    assert torch.equal(cpu_kernels.unpack_cols(cpu_kernels.pack_cols(scales)), scales)
    for rows in (n, n + 5):
        q = torch.randint(-127, 128, (rows, k), generator=g).to(torch.int8)
        packed = cpu_kernels.pack_q8(q)
        assert packed.numel() == q.numel() and torch.equal(cpu_kernels.unpack_q8(packed, rows, k), q)
    # a layer keeps its weights in the repacked form, the same bytes as unpacked
    lin = QuantLinear(torch.randn(n, k, generator=g), None, 4, dense=False, kernels=kernels)
    assert lin.qweight.numel() == n * k // 2 and lin.scales.shape == lin.mins.shape == (n // 16, k // 32, 16)


def test_a_q4_1_matrix_comes_back_with_its_own_codes_scales_and_mins():
    g = torch.Generator().manual_seed(3)
    n, k = 48, 256
    codes = torch.randint(0, 16, (n, k), generator=g)
    codes[:, ::32], codes[:, 1::32] = 0, 15          # each group spans the grid, as Q4_1's do
    d = (torch.rand(n, k // 32, generator=g) * 0.01 + 1e-3).half()
    m = (-torch.rand(n, k // 32, generator=g) * 0.1).half()
    w = (codes.view(n, -1, 32).float() * d.float()[..., None] + m.float()[..., None]).view(n, k)
    q, s, mn = quantize_int4_min(w)
    assert torch.equal(q, codes.int()) and torch.equal(s, d) and torch.equal(mn, m)
    assert torch.equal(dequantize_int4_min(q, s, mn), w)


def test_int4_layer_computes_with_the_quantized_weights():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(64, 128, generator=g) * 0.05
    lin = QuantLinear(w, None, 4, dense=False, kernels=kernels)
    wq = dequantize_int4_min(*quantize_int4_min(w))
    x = torch.randn(3, 128, generator=g)
    exact = x @ wq.T
    # only the activations' 8-bit rounding separates the kernel from the dense product
    assert ((lin(x) - exact).abs().max() / exact.abs().max()) < 2e-2


# ---- the fused decode step ------------------------------------------------------------------

CFG = dict(model_type="qwen2", vocab_size=256, hidden_size=128, intermediate_size=256,
           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=512,
           tie_word_embeddings=True)


def _model(mode: str, seed: int = 0) -> LlamaForCausalLM:
    from lmnb.runtime.loader import hf_weight_shapes

    cfg = ModelConfig.from_hf(dict(CFG))
    model = LlamaForCausalLM(cfg, torch.float32, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    weights = []
    for name, shape in hf_weight_shapes(cfg):
        t = (1 + 0.1 * torch.randn(shape, generator=g)) if "norm" in name else 0.08 * torch.randn(shape, generator=g)
        weights.append((name, t))
    model.load_weights(weights)
    model.quantize(mode)
    return model


def _pool(seed: int) -> KVPool:
    cfg = ModelConfig.from_hf(dict(CFG))
    pool = KVPool(256, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, torch.float32, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    for buf in pool.k + pool.v:
        buf.copy_(torch.randn(buf.shape, generator=g))
    return pool


def _clone(pool: KVPool) -> KVPool:
    other = KVPool(pool.size, len(pool.k), pool.k[0].shape[1], pool.k[0].shape[2], pool.dtype, pool.device)
    for a, b in zip(other.k + other.v, pool.k + pool.v):
        a.copy_(b)
    return other


# three requests: (table row, prefix length, slots of the whole sequence)
REQS = [(0, 11, torch.arange(20, 40)), (1, 30, torch.tensor([*range(60, 80), *range(100, 120)])),
        (2, 3, torch.arange(150, 160))]


def _step(model, pool, reqs, ids, ext=1):
    table = ReqToTokenPool(4, 64, torch.device("cpu"))
    for row, _, slots in REQS:
        table.write(row, 0, slots)
    mode = Mode.DECODE if ext == 1 else Mode.EXTEND
    out = torch.cat([REQS[i][2][REQS[i][1]:REQS[i][1] + ext] for i in reqs])
    fb = ForwardBatch.build(mode, ids, [REQS[i][0] for i in reqs], [REQS[i][1] for i in reqs],
                            [ext] * len(reqs), out, table.table, list(range(len(ids))))
    from lmnb.runtime.attention import create_backend

    cfg = model.cfg
    backend = create_backend("torch", "cpu", num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
                             head_dim=cfg.head_dim, scale=cfg.head_dim ** -0.5)
    return model(fb, backend, pool)


@pytest.mark.parametrize("mode,seed", [("q4", 0), ("q4", 1), ("q8", 2)])
def test_fused_step_gives_the_per_layer_path(mode, seed):
    """Same weights, same matmul kernels; the per-layer path's norms, rotary and attention
    are torch's. Those round differently in the last bits, and an activation that lands on
    the other side of an int8 rounding step moves by 1/254 of its group's range: on this
    2-layer model, scaling the per-layer path's own embeddings by 1 + 1e-6 moves its logits
    by up to 4% (0.6% on average) of their range. So the bound is that noise's size; a wrong
    head, position, residual or slot is O(1)."""
    model = _model(mode, seed)
    assert model.quantization["fused_decode"] is True and model.fused_decode is not None
    pool = _pool(seed + 1)
    ref_pool = _clone(pool)
    fused = _step(model, pool, [0, 1, 2], [5, 17, 200])
    per_layer = model.fused_decode
    model.set_fused_decode(None)
    ref = _step(model, ref_pool, [0, 1, 2], [5, 17, 200])
    model.set_fused_decode(per_layer)
    assert fused.shape == ref.shape == (3, CFG["vocab_size"])
    diff = (fused - ref).abs() / ref.abs().max()
    assert diff.max() < 0.15 and diff.mean() < 0.02, (diff.max(), diff.mean())
    # the first layer's K/V come before any activation rounding: they agree to fp32 rounding
    first = [(pool.k[0], ref_pool.k[0]), (pool.v[0], ref_pool.v[0])]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in first)
    for a, b in zip(pool.k + pool.v, ref_pool.k + ref_pool.v):
        assert torch.allclose(a, b, atol=5e-2 * b.abs().max())


def test_fused_decode_batch_is_each_request_alone():
    model = _model("q4", seed=2)
    pool = _pool(3)
    alone = []
    for i, tok in zip(range(3), [9, 99, 199]):
        p = _clone(pool)
        alone.append(_step(model, p, [i], [tok]))
    together = _step(model, pool, [0, 1, 2], [9, 99, 199])
    assert torch.equal(together, torch.cat(alone))


def test_fused_step_is_the_same_bits_with_any_thread_count():
    """The per-row phases split rows, the linears columns and attention units among the
    threads: one, two or three threads give the same logits and the same K/V."""
    model = _model("q4", seed=6)
    pool = _pool(7)
    threads = torch.get_num_threads()
    outs, pools = [], []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            p = _clone(pool)
            outs.append(_step(model, p, [0, 1, 2], [9, 99, 199]))
            pools.append(p)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    for p in pools[1:]:
        assert all(torch.equal(a, b) for a, b in zip(pools[0].k + pools[0].v, p.k + p.v))


def test_fused_verify_extend_is_successive_decode_steps():
    model = _model("q4", seed=4)
    ids = [3, 141, 59, 26, 5]
    pool = _pool(5)
    seq_pool = _clone(pool)
    extend = _step(model, pool, [1], ids, ext=len(ids))
    steps = []
    base = REQS[1]
    try:
        for j, tok in enumerate(ids):
            REQS[1] = (base[0], base[1] + j, base[2])
            steps.append(_step(model, seq_pool, [1], [tok]))
    finally:
        REQS[1] = base
    assert torch.equal(extend, torch.cat(steps))
    for a, b in zip(pool.k + pool.v, seq_pool.k + seq_pool.v):
        assert torch.equal(a, b)


def test_avx512_and_avx2_builds_give_the_same_bits(tmp_path, monkeypatch):
    """The AVX-512 loops keep the AVX2 loops' lanes and order (even groups in the low half,
    odd ones in the high half), so a machine of either kind prints the same tokens."""
    if not kernels.simd.startswith("AVX-512"):
        pytest.skip(f"this machine builds {kernels.simd}")
    monkeypatch.setenv("LMNB_CACHE_DIR", str(tmp_path))
    avx2, why = cpu_kernels.build(("-mno-avx512f",))
    assert avx2 is not None, why
    assert avx2.simd.startswith("AVX2")
    g = torch.Generator().manual_seed(11)
    for bits in (4, 8):
        for n, k in [(96, 64), (48, 544), (64, 32), (320, 1536), (50, 96)]:   # 17 and 1 groups; 50: a
            if bits == 4 and n % 16:                                         # narrower last block
                continue
            lin = QuantLinear(torch.randn(n, k, generator=g) * 0.1, torch.randn(n, generator=g), bits,
                              dense=False, kernels=kernels)
            for rows in (1, 3, 15):
                x = torch.randn(rows, k, generator=g)
                assert torch.equal(kernels.linear(lin.desc, x), avx2.linear(lin.desc, x))
    from lmnb.runtime.quant.cpu_decode import FusedDecode

    model = _model("q4", seed=6)
    pools = [_pool(7), _pool(7)]
    outs = []
    for k_, pool in zip((kernels, avx2), pools):
        model.set_fused_decode(FusedDecode(model, k_))
        outs.append(_step(model, pool, [0, 1, 2], [1, 2, 3]))
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(pools[0].k + pools[0].v, pools[1].k + pools[1].v))


# ---- the fused step's attention ------------------------------------------------------------

ATT_H, ATT_KVH, ATT_D = 9, 3, 64   # smollm2's heads


def _attention_case(seed: int, cnts: list[int], d: int = ATT_D, slots: int = 2400):
    """Random caches and queries; row r attends to cnts[r] random slots."""
    g = torch.Generator().manual_seed(seed)
    kc, vc = (torch.randn(slots, ATT_KVH, d, generator=g) for _ in range(2))
    spans = [torch.randperm(slots, generator=g)[:c] for c in cnts]
    key_slots = torch.cat(spans).long()
    off = torch.tensor([0, *torch.tensor(cnts).cumsum(0)[:-1].tolist()], dtype=torch.int64)
    q = torch.randn(len(cnts), ATT_H, d, generator=g) * 3   # peaked softmaxes as well as flat ones
    return q, kc, vc, key_slots, off, torch.tensor(cnts, dtype=torch.int64)


def _attention_reference(q, kc, vc, key_slots, off, cnt):
    rep = ATT_H // ATT_KVH
    out = []
    for r in range(q.shape[0]):
        s = key_slots[off[r]:off[r] + cnt[r]]
        kk, vv = (c[s].double().repeat_interleave(rep, 1) for c in (kc, vc))   # n, heads, d
        p = torch.softmax(torch.einsum("hd,nhd->hn", q[r].double(), kk) * q.shape[-1] ** -0.5, -1)
        out.append(torch.einsum("hn,nhd->hd", p, vv))
    return torch.stack(out)


def _attend(k, case):
    q, kc, vc, key_slots, off, cnt = case
    return k.attention(q, kc, vc, key_slots, off, cnt, q.shape[-1] ** -0.5)


# contexts around the score block (KEYS) and the work unit (SPLIT), and a long one
CONTEXTS = [1, 7, 8, 9, 15, 16, 17, 63, cpu_kernels.SPLIT - 1, cpu_kernels.SPLIT, cpu_kernels.SPLIT + 1, 1000]


@pytest.mark.parametrize("cnt", CONTEXTS)
def test_attention_equals_a_float64_reference(cnt):
    assert cpu_kernels.KEYS == 16 and cpu_kernels.SPLIT % cpu_kernels.KEYS == 0
    case = _attention_case(cnt, [cnt])
    out = _attend(kernels, case)
    assert torch.allclose(out.double(), _attention_reference(*case), atol=2e-6, rtol=1e-5)


def test_attention_rows_are_independent_of_the_step_and_the_threads():
    """A row alone, inside a step of rows with other contexts (in any order), with one thread
    or two: the same bits."""
    cnts = [1000, 7, 129, 1, 64, 300, 16, 999]
    case = _attention_case(21, cnts)
    q, kc, vc, key_slots, off, cnt = case
    together = _attend(kernels, case)
    assert torch.allclose(together.double(), _attention_reference(*case), atol=2e-6, rtol=1e-5)
    for r in range(len(cnts)):
        alone = kernels.attention(q[r:r + 1], kc, vc, key_slots, off[r:r + 1], cnt[r:r + 1], ATT_D ** -0.5)
        assert torch.equal(alone, together[r:r + 1]), r
    order = torch.tensor([5, 0, 7, 2, 1, 6, 3, 4])
    shuffled = kernels.attention(q[order].contiguous(), kc, vc, key_slots, off[order].contiguous(),
                                 cnt[order].contiguous(), ATT_D ** -0.5)
    assert torch.equal(shuffled, together[order])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(_attend(kernels, case), together)
        torch.set_num_threads(3)
        assert torch.equal(_attend(kernels, case), together)
    finally:
        torch.set_num_threads(threads)


def test_attention_takes_other_head_dims_and_refuses_others():
    for d in (16, 32, 48, 128):
        case = _attention_case(d, [1, 40, 200], d=d, slots=400)
        assert torch.allclose(_attend(kernels, case).double(), _attention_reference(*case), atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of 16"):
        _attend(kernels, _attention_case(0, [5], d=40, slots=16))


@pytest.fixture(scope="module")
def isa_builds(tmp_path_factory):
    """This machine's build and the other ISA levels it can run: AVX2 (what a machine
    without AVX-512 builds) and the portable C (no AVX at all)."""
    if not kernels.simd.startswith("AVX-512"):
        pytest.skip(f"this machine builds {kernels.simd}")
    os.environ["LMNB_CACHE_DIR"], old = str(tmp_path_factory.mktemp("isa")), os.environ.get("LMNB_CACHE_DIR")
    try:
        builds = {"avx2": cpu_kernels.build(("-mno-avx512f",)), "portable": cpu_kernels.build(("-mno-avx",))}
    finally:
        if old is None:
            del os.environ["LMNB_CACHE_DIR"]
        else:
            os.environ["LMNB_CACHE_DIR"] = old
    for name, (k, why) in builds.items():
        assert k is not None, (name, why)
    assert builds["avx2"][0].simd.startswith("AVX2") and builds["portable"][0].simd == "scalar C"
    return {name: k for name, (k, _) in builds.items()}


def test_attention_is_the_same_bits_in_every_isa_build(isa_builds):
    for d in (64, 32, 128):
        case = _attention_case(d + 1, CONTEXTS, d=d)
        ref = _attend(kernels, case)
        for name, k in isa_builds.items():
            assert torch.equal(_attend(k, case), ref), (name, d)


def test_the_fused_step_is_the_same_bits_in_the_portable_build(isa_builds):
    from lmnb.runtime.quant.cpu_decode import FusedDecode

    model = _model("q4", seed=8)
    pools = [_pool(9), _pool(9)]
    outs = []
    for k_, pool in zip((kernels, isa_builds["portable"]), pools):
        model.set_fused_decode(FusedDecode(model, k_))
        outs.append(_step(model, pool, [0, 1, 2], [4, 5, 6]))
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(pools[0].k + pools[0].v, pools[1].k + pools[1].v))


# ---- where the kernels cannot be used ----------------------------------------------------------

_PROBE = """
import lmnb as lm
from lmnb.runtime.quant import cpu_kernels
print(cpu_kernels.status())
with lm.Runtime("dummy:tiny", device="cpu", quantization="q4", max_total_tokens=256) as rt:
    print(rt.describe())
    print(len(rt.generate(["hello"], max_new_tokens=4, temperature=0, ignore_eos=True)[0]["output_ids"]))
"""


@pytest.mark.parametrize("env", [{"CC": "/nonexistent/cc"}, {"LMNB_CPU_KERNELS": "torch"}])
def test_without_the_kernels_the_runtime_says_so_and_runs(tmp_path, env):
    e = dict(os.environ, LMNB_CACHE_DIR=str(tmp_path), **env)
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=e, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    status, describe, n = r.stdout.strip().splitlines()[-3:]
    assert status.startswith("torch kernels (") and describe.count("torch kernels") == 1
    assert "no C compiler" in status or "LMNB_CPU_KERNELS=torch" in status
    assert n == "4"
