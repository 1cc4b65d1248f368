"""Reference attention in plain torch (CPU and GPU): the ground truth for the kernels.

Decode on CUDA, and a CPU decode step of ROW_EXACT_ROWS requests or more, gathers every
request's K/V into a padded [bs, max_len] batch (one SDPA call per layer); extend runs
one SDPA call per request, so nothing is padded where prompts differ.
On the CPU a request whose KV slots are one range (the allocator hands out ascending
slots, see memory.TokenSlotAllocator) is read in place instead of gathered.

A CPU step of fewer than ROW_EXACT_ROWS rows is row-exact: each row is computed as a
decode step of its request alone would compute it (one unmasked SDPA call per decode
request, and per row of an extend, over exactly that row's keys). The quantized layers
are row-invariant in such steps too, so drafts verified in one step and requests decoded
together give bitwise the tokens of plain decoding alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lmnb.runtime.attention.base import AttentionBackend
from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool
from lmnb.runtime.quant.cpu_linear import DENSE_ROWS

# below this many rows in a step every CPU layer computes a row as it would alone
# (cpu_linear's GEMV kernels); attention then does too (see the module docstring)
ROW_EXACT_ROWS = DENSE_ROWS


class TorchBackend(AttentionBackend):
    name = "torch"
    reads_fp8_kv = True   # KVPool.read dequantizes (kv_dtype.dequantize_ref)

    def init_forward(self, batch: ForwardBatch) -> None:
        rows = batch.req_to_token[batch.req_pool_indices].long()
        spans = [rows[i, :s] for i, s in enumerate(batch.seq_lens_cpu)]
        exact = not rows.is_cuda and batch.input_ids.numel() < ROW_EXACT_ROWS
        if batch.mode is Mode.DECODE and not exact:
            max_len = max(batch.seq_lens_cpu)
            ar = torch.arange(max_len, device=rows.device)
            valid = ar[None, :] < batch.seq_lens[:, None]
            batch.attn_state = (rows[:, :max_len], valid[:, None, None, :])
            return
        # per request: its slot range (or None), its slots, whether it runs row by row
        batch.attn_state = [(contiguous_range(idx), idx, exact) for idx in spans]

    def forward(self, q, k, v, layer: int, batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        pool.store(layer, batch.out_cache_loc, k, v)
        if isinstance(batch.attn_state, tuple):
            idx, mask = batch.attn_state   # decode, padded [bs, max_len]: one masked SDPA call
            kk, vv = pool.read(layer, lambda buf: _gather(buf, idx), q.dtype)
            return self._rows(q, kk.transpose(1, 2), vv.transpose(1, 2), mask)  # [bs, KVH, L, D]
        out = torch.empty_like(q)
        start = 0
        for i, (span, idx, by_rows) in enumerate(batch.attn_state):
            ext, pre = batch.extend_lens_cpu[i], batch.prefix_lens_cpu[i]
            ki, vi = pool.read(layer, lambda buf: _read(buf, span, idx), q.dtype)  # [S, KVH, D]
            if by_rows:   # each row as a decode step of its own, over exactly its own keys
                for j in range(ext):
                    n = pre + j + 1
                    kk = ki[:n].transpose(0, 1)[None]       # [1, KVH, n, D]
                    vv = vi[:n].transpose(0, 1)[None]
                    out[start + j] = self._rows(q[start + j : start + j + 1], kk, vv, None)[0]
                start += ext
                continue
            qi = q[start : start + ext].transpose(0, 1)[None]          # [1, H, ext, D]
            ki = ki.transpose(0, 1)[None]                 # [1, KVH, S, D]
            vi = vi.transpose(0, 1)[None]
            if pre == 0:
                oi = self._sdpa(qi, ki, vi, None, causal=True)
            else:
                rows = torch.arange(pre, pre + ext, device=q.device)[:, None]
                cols = torch.arange(pre + ext, device=q.device)[None, :]
                oi = self._sdpa(qi, ki, vi, (cols <= rows)[None, None])
            out[start : start + ext] = oi[0].transpose(0, 1)
            start += ext
        return out

    def _rows(self, q, kk, vv, mask) -> torch.Tensor:
        """Attention of one query row per request ([bs, H, D]) over [bs, KVH, L, D] keys;
        GQA without copying K/V: the query heads of one KV head become its queries."""
        bs, kvh = q.shape[0], self.num_kv_heads
        qg = q.reshape(bs, kvh, self.num_heads // kvh, self.head_dim)
        o = F.scaled_dot_product_attention(qg, kk, vv, attn_mask=mask, scale=self.scale)
        return o.reshape(bs, self.num_heads, self.head_dim)

    def _sdpa(self, q, k, v, mask, causal: bool = False) -> torch.Tensor:
        rep = self.num_heads // self.num_kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              scale=self.scale)


def _gather(buf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """buf[idx] for a [slots, KVH, D] pool, as one row copy per slot (index_select is
    several times faster than advanced indexing here)."""
    rows = torch.index_select(buf.view(buf.shape[0], -1), 0, idx.reshape(-1))
    return rows.view(*idx.shape, *buf.shape[1:])


def _read(buf: torch.Tensor, span: tuple[int, int] | None, idx: torch.Tensor) -> torch.Tensor:
    """buf[idx]: a view when the slots are one range, else a gather."""
    return buf[span[0]:span[1]] if span is not None else _gather(buf, idx)


def contiguous_range(slots: torch.Tensor) -> tuple[int, int] | None:
    """(start, end) when `slots` (1-d) are start, start + 1, ..., end - 1; None for slots
    on a GPU (reading them would wait for the device: those are gathered)."""
    if slots.is_cuda:
        return None
    n = slots.numel()
    start = int(slots[0])
    if int(slots[-1]) - start != n - 1:
        return None
    if n > 2 and not torch.equal(slots, torch.arange(start, start + n, dtype=slots.dtype)):
        return None
    return start, start + n
