"""Attention through FlashInfer's wrappers, the token pool seen as a paged cache of page
size 1 (a page index is a KV slot).

- extend, no request has a cached prefix: the ragged prefill wrapper over this step's own
  K/V (no gather at all);
- extend with prefixes: the paged prefill wrapper over every position of each request
  (the new slots are in `req_to_token` and stored first), causal with the queries aligned
  to the end of each sequence, which is exactly the `ForwardBatch` layout;
- decode: the paged decode wrapper.

`init_forward` builds the page indices on the device (`req_to_token` rows cut to each
length, no host sync: sizes come from the batch's host copies); the wrappers are planned
lazily at the first layer, once q's dtype is known, and reused by every layer of the step.
FlashInfer has no fp32 kernels: fp32 steps run the torch reference backend instead.
Kernels are JIT-compiled by FlashInfer on first use per (dtype, head_dim): minutes, once
per machine (its cache lives under ~/.cache/flashinfer); `warm_up` triggers it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmnb.errors import LmnbError
from lmnb.runtime.attention.base import AttentionBackend
from lmnb.runtime.attention.torch_backend import TorchBackend
from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool

try:
    import flashinfer
except Exception as e:  # noqa: BLE001 - ImportError, or a broken install failing at import
    raise LmnbError(f"attention='flashinfer' needs the flashinfer-python package ({e}); "
                    "use attention='triton' or 'torch'") from None

WORKSPACE_BYTES = 128 * 1024 * 1024


@dataclass(slots=True)
class FlashInferPlan:
    kind: str                    # "ragged" | "paged_prefill" | "decode"
    qo_indptr: torch.Tensor      # host int32 [bs + 1]
    kv_indptr: torch.Tensor      # host int32 [bs + 1]
    kv_indices: torch.Tensor | None  # device int32 [sum(seq_lens)]
    planned_dtype: torch.dtype | None = None
    torch_state: object = None   # the reference backend's plan, for fp32 steps


class FlashInferBackend(AttentionBackend):
    name = "flashinfer"

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__(num_heads, num_kv_heads, head_dim, scale)
        self._wrappers: dict[str, object] = {}
        self._device: torch.device | None = None
        self._torch = TorchBackend(num_heads, num_kv_heads, head_dim, scale)

    def init_forward(self, batch: ForwardBatch) -> None:
        seq, ext = batch.seq_lens_cpu, batch.extend_lens_cpu
        qo = _indptr([1] * len(seq) if batch.mode is Mode.DECODE else ext)
        kv = _indptr(seq)
        if batch.mode is Mode.EXTEND and not any(batch.prefix_lens_cpu):
            plan = FlashInferPlan("ragged", qo, qo, None)
        else:
            kind = "decode" if batch.mode is Mode.DECODE else "paged_prefill"
            plan = FlashInferPlan(kind, qo, kv, _page_indices(batch, int(kv[-1])))
        batch.attn_state = plan

    def forward(self, q, k, v, layer: int, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        plan = batch.attn_state
        if q.dtype == torch.float32:
            return self._forward_torch(q, k, v, layer, batch, pool, plan)
        pool.store(layer, batch.out_cache_loc, k, v)
        wrapper = self._planned(plan, q.dtype, pool.dtype, q.device)
        if plan.kind == "ragged":
            return wrapper.run(q, k.to(q.dtype), v.to(q.dtype))
        paged = (pool.k[layer].unsqueeze(1), pool.v[layer].unsqueeze(1))  # [slots, 1, KVH, D]
        return wrapper.run(q, paged)

    def _forward_torch(self, q, k, v, layer, batch, pool, plan: FlashInferPlan):
        """fp32: the reference backend, planned on first use in the step."""
        try:
            if plan.torch_state is None:
                self._torch.init_forward(batch)
                plan.torch_state = batch.attn_state
            batch.attn_state = plan.torch_state
            return self._torch.forward(q, k, v, layer, batch, pool)
        finally:
            batch.attn_state = plan

    # ------------------------------------------------------------------ planning
    def _wrapper(self, kind: str, device: torch.device):
        if kind not in self._wrappers:
            if self._device is None:
                self._device = device
                self._workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
            ws = self._workspace
            self._wrappers[kind] = {
                "ragged": lambda: flashinfer.BatchPrefillWithRaggedKVCacheWrapper(
                    ws, "NHD", backend="fa2"),
                "paged_prefill": lambda: flashinfer.BatchPrefillWithPagedKVCacheWrapper(
                    ws, "NHD", backend="fa2"),
                "decode": lambda: flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                    ws, "NHD", backend="fa2"),
            }[kind]()
        return self._wrappers[kind]

    def _planned(self, plan: FlashInferPlan, dtype: torch.dtype, kv_dtype: torch.dtype,
                 device: torch.device):
        wrapper = self._wrapper(plan.kind, device)
        if plan.planned_dtype == dtype:
            return wrapper
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        bs = plan.qo_indptr.numel() - 1
        common = {"q_data_type": dtype, "kv_data_type": kv_dtype, "sm_scale": self.scale}
        if plan.kind == "ragged":
            wrapper.plan(plan.qo_indptr, plan.kv_indptr, h, kvh, d, causal=True, **common)
        elif plan.kind == "paged_prefill":
            wrapper.plan(plan.qo_indptr, plan.kv_indptr, plan.kv_indices, _ones(bs), h, kvh, d,
                         1, causal=True, **common)
        else:
            wrapper.plan(plan.kv_indptr, plan.kv_indices, _ones(bs), h, kvh, d, 1, **common)
        plan.planned_dtype = dtype
        return wrapper


def _indptr(lens: list[int]) -> torch.Tensor:
    out = torch.zeros(len(lens) + 1, dtype=torch.int32)
    out[1:] = torch.tensor(lens, dtype=torch.int32).cumsum(0)
    return out


def _ones(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.int32)


def _page_indices(batch: ForwardBatch, total: int) -> torch.Tensor:
    """req_to_token[row_i, :seq_len_i] for every request, concatenated, on the device."""
    lens = batch.seq_lens
    rows = torch.repeat_interleave(batch.req_pool_indices, lens, output_size=total)
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(total, device=lens.device) - torch.repeat_interleave(
        starts, lens, output_size=total)
    return batch.req_to_token[rows, pos].to(torch.int32)


def warm_up(num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
            device: torch.device | str = "cuda") -> None:
    """Plan each wrapper once on a tiny batch, which JIT-compiles its kernels."""
    from lmnb.runtime.memory import ReqToTokenPool

    device = torch.device(device)
    pool = KVPool(16, 1, num_kv_heads, head_dim, dtype, device)
    table = ReqToTokenPool(2, 8, device)
    table.write(0, 0, torch.arange(1, 5))
    backend = FlashInferBackend(num_heads, num_kv_heads, head_dim, head_dim ** -0.5)
    for mode, prefix, ext in ((Mode.EXTEND, 0, 4), (Mode.EXTEND, 2, 2), (Mode.DECODE, 3, 1)):
        loc = torch.arange(1 + prefix, 1 + prefix + ext)
        batch = ForwardBatch.build(mode, [0] * ext, [0], [prefix], [ext], loc, table.table,
                                   [ext - 1])
        backend.init_forward(batch)
        q = torch.randn(ext, num_heads, head_dim, dtype=dtype, device=device)
        kv = torch.randn(ext, num_kv_heads, head_dim, dtype=dtype, device=device)
        backend.forward(q, kv, kv, 0, batch, pool)
    torch.cuda.synchronize(device)
