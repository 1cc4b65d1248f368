"""Shared pieces of the GPU tests: device choice, random batches over a real KV pool with
scattered slots, and a float64 attention reference.

The tests run on CUDA; with `TRITON_INTERPRET=1` (and triton installed) they also run on
the CPU through Triton's interpreter, which is slow and lacks bf16, so bf16 cases run as fp16
and graph capture skips there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool, ReqToTokenPool

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# ‖out − ref‖ / ‖ref‖ against a float64 reference
REL_TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3, torch.float32: 1e-5}


def _patch_interpreter_scalars() -> None:
    """The interpreter keeps loaded scalars as 1-element arrays, which numpy 2 refuses to
    turn into ints (`range(start, end)` over loaded bounds fails); the compiler has no such
    limit, so this is a test-only shim."""
    import triton.runtime.interpreter as ti

    orig = ti._patch_lang_tensor

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    ti._patch_lang_tensor = patched


if INTERPRET and not torch.cuda.is_available():
    try:
        _patch_interpreter_scalars()
    except (ImportError, AttributeError):
        pass


def needs_gpu_or_interpreter() -> None:
    """Module-level skip: call at the top of every GPU test module."""
    if not torch.cuda.is_available() and not INTERPRET:
        pytest.skip("needs a CUDA device", allow_module_level=True)
    pytest.importorskip("triton")


def usable(dtype: torch.dtype) -> torch.dtype:
    """bf16 becomes fp16 under the interpreter, which has no bf16."""
    return torch.float16 if INTERPRET and dtype == torch.bfloat16 else dtype


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖; appended to $LMNB_ERR_LOG (test, dtype, error) when set."""
    dtype = out.dtype
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "non-finite values in the output"
    err = ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
    log = os.environ.get("LMNB_ERR_LOG")
    if log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
        with open(log, "a") as f:
            f.write(f"{test}\t{str(dtype).removeprefix('torch.')}\t{err:.3e}\n")
    return err


@dataclass
class Case:
    pool: KVPool
    req_pool: ReqToTokenPool
    batch: ForwardBatch
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float


def make_case(prefix_lens: list[int], extend_lens: list[int], num_heads: int, kv_heads: int,
              head_dim: int, dtype: torch.dtype, mode: Mode = Mode.EXTEND, seed: int = 0,
              num_layers: int = 1) -> Case:
    """A batch whose prefix K/V are random values already in the pool, at slots drawn at
    random from the whole pool (non-contiguous), in randomly chosen req_to_token rows;
    table entries past each sequence hold other valid slots, to catch over-reads."""
    g = torch.Generator().manual_seed(seed)
    bs = len(prefix_lens)
    seq = [p + e for p, e in zip(prefix_lens, extend_lens)]
    total = sum(seq)
    size = 2 * total + 16
    pool = KVPool(size, num_layers, kv_heads, head_dim, dtype, DEVICE)
    for layer in range(num_layers):
        pool.k[layer].copy_(torch.randn(pool.k[layer].shape, generator=g))
        pool.v[layer].copy_(torch.randn(pool.v[layer].shape, generator=g))
    req_pool = ReqToTokenPool(bs + 7, max(seq) + 9, DEVICE)
    req_pool.table.copy_(torch.randint(1, size + 1, req_pool.table.shape, generator=g))
    slots = (torch.randperm(size, generator=g) + 1)[:total]
    rows = torch.randperm(bs + 7, generator=g)[:bs].tolist()
    new, at = [], 0
    for row, s, p in zip(rows, seq, prefix_lens):
        req_pool.write(row, 0, slots[at : at + s])
        new.append(slots[at + p : at + s])
        at += s
    t = sum(extend_lens)
    batch = ForwardBatch.build(mode, [0] * t, rows, prefix_lens, extend_lens,
                               torch.cat(new), req_pool.table,
                               [i - 1 for i in torch.tensor(extend_lens).cumsum(0).tolist()])
    q = torch.randn((t, num_heads, head_dim), generator=g).to(DEVICE, dtype)
    k = torch.randn((t, kv_heads, head_dim), generator=g).to(DEVICE, dtype)
    v = torch.randn((t, kv_heads, head_dim), generator=g).to(DEVICE, dtype)
    return Case(pool, req_pool, batch, q, k, v, head_dim ** -0.5)


def ref_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                  batch: ForwardBatch, scale: float) -> torch.Tensor:
    """float64 causal attention, per request, from K/V already in the pool."""
    group = q.shape[1] // k_buf.shape[1]
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    at = 0
    rows = batch.req_pool_indices.tolist()
    for row, pre, ext in zip(rows, batch.prefix_lens_cpu, batch.extend_lens_cpu):
        s = pre + ext
        slots = batch.req_to_token[row, :s].long()
        kk = k_buf[slots].double().repeat_interleave(group, dim=1)
        vv = v_buf[slots].double().repeat_interleave(group, dim=1)
        qq = q[at : at + ext].double()
        logits = torch.einsum("qhd,khd->hqk", qq, kk) * scale
        pos = torch.arange(pre, s, device=q.device)
        mask = torch.arange(s, device=q.device)[None, :] <= pos[:, None]
        logits = logits.masked_fill(~mask[None], float("-inf"))
        out[at : at + ext] = torch.einsum("hqk,khd->qhd", logits.softmax(-1), vv)
        at += ext
    return out


def slots_in_use(case: Case, seq_lens: list[int]) -> set[int]:
    """The pool slots the first `seq_lens` table entries of the case's requests hold."""
    rows = case.batch.req_pool_indices.tolist()
    return {int(x) for r, s in zip(rows, seq_lens) for x in case.req_pool.table[r, :s].tolist()}


def append_decode_slots(case: Case, lens: list[int], new: torch.Tensor) -> list[int]:
    """Advance the case's decode batch by one token per request, written at slots `new`
    (in place, as a captured graph's inputs are refreshed); returns the new lengths."""
    batch = case.batch
    for row, s, slot in zip(batch.req_pool_indices.tolist(), lens, new):
        case.req_pool.write(row, s, slot.view(1))
    lens = [s + 1 for s in lens]
    batch.seq_lens.copy_(torch.tensor(lens))
    batch.out_cache_loc.copy_(new)
    batch.seq_lens_cpu = lens
    batch.prefix_lens_cpu = [s - 1 for s in lens]
    return lens


def captured_forward(backend, q, k, v, batch, pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """`backend.forward` of layer 0 captured in a CUDA graph, after a warm-up run on a side
    stream (kernels compile outside the capture): (graph, its output tensor)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        backend.forward(q, k, v, 0, batch, pool)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(q, k, v, 0, batch, pool)
    return graph, out


def fp8_runtime_pair(**fp8_kwargs):
    """For a module fixture (`yield from`): dummy:qwen3-0.6b in bf16 and with `fp8_kwargs`
    (quantization, kv_cache_dtype) on the same seeded weights; skips without FP8 support."""
    if DEVICE.type != "cuda" or torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("needs a CUDA GPU with FP8 support")
    import lmnb as lm

    kw = dict(device="cuda", kv_memory_gb=1.0, max_running_requests=16)
    ref = lm.Runtime("dummy:qwen3-0.6b", **kw)
    q = lm.Runtime("dummy:qwen3-0.6b", **fp8_kwargs, **kw)
    try:
        yield ref, q
    finally:
        ref.shutdown()
        q.shutdown()
