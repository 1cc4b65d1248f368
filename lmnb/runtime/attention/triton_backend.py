"""Attention with the project's own Triton kernels (see `triton_kernels`).

`init_forward` plans each step on the host from the batch's host copies (`seq_lens_cpu`,
`extend_lens_cpu`), so a decode step makes no device-to-host sync: the split count of
decode and the grid of extend come from host ints, everything else the kernels read from
the batch's device tensors.

CUDA graphs (decode). Graph replay reuses the kernels' grid and pointers, so:
1. `init_cuda_graph(max_bs, max_context)` once: allocates the static split buffers.
2. Build one static `ForwardBatch` per captured batch size (its device tensors are the
   graph's inputs) and call `init_forward_graph(batch)` before capture. Its split count
   depends only on (bs, max_context), never on the current lengths, and the kernels read
   `seq_lens`, `req_pool_indices` and `req_to_token` from the batch's device tensors.
3. Before each replay copy the new values into those tensors; do not call
   `init_forward` again. Padding rows may use `seq_len` 0 (their output is zeros) or 1
   with slot 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lmnb.runtime.attention import triton_kernels as tk
from lmnb.runtime.attention.base import AttentionBackend
from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool


@dataclass(slots=True)
class DecodePlan:
    num_splits: int
    mid_o: torch.Tensor | None
    mid_lse: torch.Tensor | None


@dataclass(slots=True)
class ExtendPlan:
    max_extend: int
    # small extends run as decode: one virtual request per new token (same table row,
    # length = its position + 1), so a long prefix is split over SMs like a decode
    as_decode: DecodePlan | None = None
    rows: torch.Tensor | None = None
    lens: torch.Tensor | None = None


# extends of at most this many tokens in all use the decode kernel (each token re-reads
# its prefix, so only few tokens gain; a 1-token re-run over a 4k prefix: 130 -> ~20 us)
SMALL_EXTEND_TOKENS = 8


class TritonBackend(AttentionBackend):
    name = "triton"
    reads_fp8_kv = True   # the kernels take the pool's scales (triton_kernels docstring)

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        super().__init__(num_heads, num_kv_heads, head_dim, scale)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of "
                             f"num_kv_heads {num_kv_heads}")
        self._num_sms: dict[torch.device, int] = {}
        self._graph_bufs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._graph_max_context = 0
        self._q_dtype: torch.dtype | None = None   # of the steps run so far (warm_up)

    # ------------------------------------------------------------------ planning
    def init_forward(self, batch: ForwardBatch) -> None:
        if batch.mode is Mode.DECODE:
            max_len = max(batch.seq_lens_cpu) if batch.seq_lens_cpu else int(batch.seq_lens.max())
            splits = self._num_splits(batch.batch_size, max_len, batch.seq_lens.device)
            bufs = (None, None)
            if splits > 1:
                bufs = tk.decode_buffers(batch.batch_size, self.num_heads, splits,
                                         self.head_dim, batch.seq_lens.device)
            batch.attn_state = DecodePlan(splits, *bufs)
        else:
            lens = batch.extend_lens_cpu
            max_ext = max(lens) if lens else int(batch.extend_lens.max())
            total = sum(lens)
            if lens and 0 < total <= SMALL_EXTEND_TOKENS:
                batch.attn_state = self._extend_as_decode(batch, max_ext, total)
            else:
                batch.attn_state = ExtendPlan(max_ext)

    def _extend_as_decode(self, batch: ForwardBatch, max_ext: int, total: int) -> ExtendPlan:
        dev = batch.seq_lens.device
        splits = self._num_splits(total, max(batch.seq_lens_cpu), dev)
        bufs = (None, None)
        if splits > 1:
            bufs = tk.decode_buffers(total, self.num_heads, splits, self.head_dim, dev)
        rows = torch.repeat_interleave(batch.req_pool_indices, batch.extend_lens,
                                       output_size=total)
        return ExtendPlan(max_ext, DecodePlan(splits, *bufs), rows, batch.positions + 1)

    def init_cuda_graph(self, max_bs: int, max_context: int, device: torch.device) -> None:
        """Static split buffers for every batch size up to `max_bs`."""
        splits = max(self._num_splits(bs, max_context, device) for bs in range(1, max_bs + 1))
        self._graph_bufs = tk.decode_buffers(max_bs, self.num_heads, splits, self.head_dim,
                                             device)
        self._graph_max_context = max_context

    def init_forward_graph(self, batch: ForwardBatch) -> None:
        """Decode plan for capture: split count from (bs, max_context), static buffers."""
        if self._graph_bufs is None:
            raise RuntimeError("call init_cuda_graph before init_forward_graph")
        if batch.mode is not Mode.DECODE:
            raise ValueError("CUDA graphs cover decode batches only")
        bs = batch.batch_size
        splits = self._num_splits(bs, self._graph_max_context, batch.seq_lens.device)
        mid_o, mid_lse = self._graph_bufs
        batch.attn_state = DecodePlan(splits, mid_o[:bs], mid_lse[:bs])

    def _num_splits(self, bs: int, max_len: int, device: torch.device) -> int:
        if device not in self._num_sms:
            self._num_sms[device] = (torch.cuda.get_device_properties(device).multi_processor_count
                                     if device.type == "cuda" else 8)
        return tk.decode_num_splits(bs, self.num_kv_heads, max_len, self._num_sms[device])

    def warm_up(self, pool: KVPool, req_to_token: torch.Tensor) -> None:
        """Compile every extend kernel shape over this pool (one query of request row 0
        over slot 0, into a scratch output; the pool is only read): a serving run's first
        large prefill batch then waits for no compiler (~1.6-2.7 s on an H200)."""
        if self._q_dtype is None:   # no step ran yet: the queries' dtype is not known
            return
        dev = req_to_token.device
        # a batch built as the runner builds its own (the kernel is specialized on the
        # index tensors' dtypes): one new token of request row 0 at slot 0
        batch = ForwardBatch.build(Mode.EXTEND, [0], [0], [0], [1],
                                   torch.zeros(1, dtype=torch.int64), req_to_token, [0])
        q = torch.zeros((1, self.num_heads, self.head_dim), dtype=self._q_dtype, device=dev)
        ks, vs = pool.scales(0)
        for cfg in tk.extend_configs(self.head_dim, q.dtype):
            tk.extend_attention(q, pool.k[0], pool.v[0], torch.empty_like(q), req_to_token,
                                batch.req_pool_indices, batch.prefix_lens, batch.extend_lens,
                                batch.extend_starts, 1, self.scale, config=cfg, k_scale=ks,
                                v_scale=vs)

    # ------------------------------------------------------------------ compute
    def forward(self, q, k, v, layer: int, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        k_buf, v_buf = pool.k[layer], pool.v[layer]
        scales = pool.scales(layer)
        tk.store_kv(k_buf, v_buf, batch.out_cache_loc, k, v, *scales)
        return self._attend(q, k_buf, v_buf, scales, batch)

    def forward_rotary(self, q, k, v, positions, cos, sin, layer: int, batch: ForwardBatch,
                       pool: KVPool) -> torch.Tensor:
        """forward() of q, k before their rotary embedding: one kernel rotates q and k and
        stores k and v in the pool (`kernels.rope.rotary_store_triton`), then attention."""
        from lmnb.runtime.kernels.rope import rotary_store_triton

        k_buf, v_buf = pool.k[layer], pool.v[layer]
        scales = pool.scales(layer)
        q = rotary_store_triton(q, k, v, positions, cos, sin, k_buf, v_buf, batch.out_cache_loc,
                                *scales)
        return self._attend(q, k_buf, v_buf, scales, batch)

    def _attend(self, q, k_buf, v_buf, scales, batch: ForwardBatch) -> torch.Tensor:
        self._q_dtype = q.dtype
        o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        plan = batch.attn_state
        ks, vs = scales
        if batch.mode is Mode.DECODE:
            return tk.decode_attention(q, k_buf, v_buf, o, batch.req_to_token,
                                       batch.req_pool_indices, batch.seq_lens, self.scale,
                                       plan.num_splits, plan.mid_o, plan.mid_lse,
                                       k_scale=ks, v_scale=vs)
        if plan.as_decode is not None:
            d = plan.as_decode
            return tk.decode_attention(q, k_buf, v_buf, o, batch.req_to_token, plan.rows,
                                       plan.lens, self.scale, d.num_splits, d.mid_o, d.mid_lse,
                                       k_scale=ks, v_scale=vs)
        return tk.extend_attention(q, k_buf, v_buf, o, batch.req_to_token,
                                   batch.req_pool_indices, batch.prefix_lens, batch.extend_lens,
                                   batch.extend_starts, plan.max_extend, self.scale,
                                   k_scale=ks, v_scale=vs)
