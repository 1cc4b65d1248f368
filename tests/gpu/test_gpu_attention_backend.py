"""The triton backend against the torch reference backend through the full `forward`
interface: real KVPool / ReqToTokenPool, scattered slots, an extend step over cached
prefixes followed by decode steps, several layers."""
from __future__ import annotations

import random

import pytest
import torch
from gpu_common import (
    DEVICE,
    INTERPRET,
    REL_TOL,
    append_decode_slots,
    captured_forward,
    make_case,
    needs_gpu_or_interpreter,
    ref_attention,
    rel_err,
    slots_in_use,
    usable,
)

needs_gpu_or_interpreter()
pytestmark = pytest.mark.gpu

from lmnb.runtime.attention import create_backend
from lmnb.runtime.attention.torch_backend import TorchBackend
from lmnb.runtime.attention.triton_backend import TritonBackend
from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool

LAYERS = 2


def _clone_pool(pool: KVPool) -> KVPool:
    other = KVPool(pool.size, len(pool.k), pool.k[0].shape[1], pool.k[0].shape[2], pool.dtype,
                   pool.device)
    for a, b in zip(other.k + other.v, pool.k + pool.v):
        a.copy_(b)
    return other


def _decode_batch(case, seq_lens: list[int], rows: list[int], free: list[int]) -> ForwardBatch:
    """Next decode step: each request gets one fresh slot, written to its table row."""
    new = torch.tensor([free.pop() for _ in rows])
    for row, s, slot in zip(rows, seq_lens, new):
        case.req_pool.write(row, s, slot.view(1))
    return ForwardBatch.build(Mode.DECODE, [0] * len(rows), rows, seq_lens, [1] * len(rows),
                              new, case.req_pool.table, list(range(len(rows))))


def _qkv(t, h, kvh, d, dtype, g):
    return [torch.randn((t, n, d), generator=g).to(DEVICE, dtype) for n in (h, kvh, kvh)]


def _step(backends, pools, batch, h, kvh, d, dtype, g):
    """One model step on both backends (each plans the batch itself, as the model runner
    would); returns the worst relative error of triton vs torch and vs float64."""
    inputs = [_qkv(batch.input_ids.numel(), h, kvh, d, dtype, g) for _ in range(LAYERS)]
    outs = []
    for backend, pool in zip(backends, pools):
        backend.init_forward(batch)
        outs.append([backend.forward(q, k, v, layer, batch, pool)
                     for layer, (q, k, v) in enumerate(inputs)])
    worst_vs_torch = worst_vs_ref = 0.0
    for layer, (q, _, _) in enumerate(inputs):
        ref = ref_attention(q, pools[1].k[layer], pools[1].v[layer], batch, d ** -0.5)
        worst_vs_torch = max(worst_vs_torch, rel_err(outs[1][layer], outs[0][layer]))
        worst_vs_ref = max(worst_vs_ref, rel_err(outs[1][layer], ref))
    for a, b in zip(pools[0].k + pools[0].v, pools[1].k + pools[1].v):
        assert torch.equal(a, b), "the two backends stored different K/V"
    return worst_vs_torch, worst_vs_ref


@pytest.mark.parametrize("bs,group,head_dim,dtype", [
    (1, 1, 128, torch.bfloat16), (3, 3, 64, torch.bfloat16), (17, 4, 128, torch.bfloat16),
    (64, 8, 64, torch.bfloat16), (5, 4, 128, torch.float16), (3, 2, 64, torch.float32),
])
def test_triton_backend_matches_torch_backend(bs, group, head_dim, dtype):
    dtype = usable(dtype)
    if INTERPRET and bs > 17:
        pytest.skip("too slow for the interpreter")
    check_against_torch_backend(TritonBackend, bs, group, head_dim, dtype)


def check_against_torch_backend(backend_cls, bs, group, head_dim, dtype, prefixes=None):
    """An extend step over mixed cached prefixes (0, 1, 37, 500), then 3 decode steps, on
    two layers; `backend_cls` and the torch backend each own a copy of the pool."""
    rng = random.Random(bs * group)
    if prefixes is None:
        prefixes = [rng.choice([0, 1, 37, 500]) for _ in range(bs)]
    exts = [rng.randint(1, 100) for _ in range(bs)]
    kvh = 2
    h = kvh * group
    case = make_case(prefixes, exts, h, kvh, head_dim, dtype, seed=bs, num_layers=LAYERS)
    pools = [case.pool, _clone_pool(case.pool)]
    backends = [TorchBackend(h, kvh, head_dim, case.scale),
                backend_cls(h, kvh, head_dim, case.scale)]
    g = torch.Generator().manual_seed(bs + 1)
    errs = [_step(backends, pools, case.batch, h, kvh, head_dim, dtype, g)]
    seq = [p + e for p, e in zip(prefixes, exts)]
    in_use = slots_in_use(case, seq)
    free = [s for s in range(1, case.pool.size + 1) if s not in in_use]
    rng.shuffle(free)
    rows = case.batch.req_pool_indices.tolist()
    for _ in range(3):
        batch = _decode_batch(case, seq, rows, free)
        seq = [s + 1 for s in seq]
        errs.append(_step(backends, pools, batch, h, kvh, head_dim, dtype, g))
    for vs_torch, vs_ref in errs:
        # the torch backend rounds to the model dtype too, so allow both roundings
        assert vs_torch < 2 * REL_TOL[dtype], errs
        assert vs_ref < REL_TOL[dtype], errs
    return errs


def test_create_backend_by_name():
    if DEVICE.type != "cuda":
        pytest.skip("create_backend needs a CUDA device for triton")
    b = create_backend("triton", "cuda", num_heads=8, num_kv_heads=2, head_dim=64, scale=0.125)
    assert isinstance(b, TritonBackend) and b.name == "triton"


def test_decode_cuda_graph_replay():
    """Capture one decode step, then replay it on later steps with new lengths, slots
    and inputs copied into the static tensors."""
    if DEVICE.type != "cuda":
        pytest.skip("CUDA graphs need a CUDA device")
    dtype, h, kvh, d = torch.bfloat16, 8, 2, 128
    lens = [5, 300, 1, 2000, 77]
    bs = len(lens)
    case = make_case([s - 1 for s in lens], [1] * bs, h, kvh, d, dtype, Mode.DECODE, seed=3)
    backend = TritonBackend(h, kvh, d, case.scale)
    backend.init_cuda_graph(max_bs=8, max_context=4096, device=DEVICE)
    batch = case.batch
    backend.init_forward_graph(batch)
    q, k, v = case.q.clone(), case.k.clone(), case.v.clone()
    graph, out = captured_forward(backend, q, k, v, batch, case.pool)
    g = torch.Generator().manual_seed(4)
    free = sorted(set(range(1, case.pool.size + 1)) - slots_in_use(case, lens))
    for step in range(3):
        if step:
            lens = append_decode_slots(case, lens, torch.tensor(free[step * bs : (step + 1) * bs]))
        for t, n in ((q, h), (k, kvh), (v, kvh)):
            t.copy_(torch.randn((bs, n, d), generator=g))
        graph.replay()
        ref = ref_attention(q, case.pool.k[0], case.pool.v[0], batch, case.scale)
        assert rel_err(out, ref) < REL_TOL[dtype], f"step {step}"


@pytest.mark.parametrize("kv_dtype", ["model", "fp8"])
def test_warm_up_runs_every_extend_shape(kv_dtype, monkeypatch):
    """warm_up (called with the decode graphs' capture) runs the extend kernel once per
    shape extend_config may pick, over the pool's own dtype, after a step told it the
    queries' dtype; before any step it does nothing. The pool is left as it was."""
    from lmnb.runtime.attention import triton_kernels as tk
    from lmnb.runtime.kv_dtype import FP8_KV
    from lmnb.runtime.memory import ReqToTokenPool

    dtype, h, kvh, d = usable(torch.bfloat16), 8, 2, 64
    pool = KVPool(16, 1, kvh, d, FP8_KV if kv_dtype == "fp8" else dtype, DEVICE)
    table = ReqToTokenPool(2, 8, DEVICE).table
    backend = TritonBackend(h, kvh, d, d ** -0.5)
    seen, real = [], tk.extend_attention

    def spy(*args, config=None, **kw):
        seen.append((args[0].dtype, config))
        return real(*args, config=config, **kw)

    monkeypatch.setattr(tk, "extend_attention", spy)
    backend.warm_up(pool, table)
    assert seen == []
    backend._q_dtype = dtype   # what a step's _attend records
    before = [t.clone() for t in pool.k + pool.v]
    backend.warm_up(pool, table)
    assert seen == [(dtype, c) for c in tk.extend_configs(d, dtype)]
    assert all(torch.equal(a, b) for a, b in zip(before, pool.k + pool.v))
