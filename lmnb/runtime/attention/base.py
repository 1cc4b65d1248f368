"""The attention backend interface.

A backend computes causal attention for a `ForwardBatch` over the token-level KV pool:
for request i, the queries of positions prefix_lens[i]..seq_lens[i]-1 attend to the keys
of positions 0..(own position), read through `req_to_token`. GQA: query head h uses KV
head h // (num_heads // num_kv_heads).

Contract for `forward`: it first stores this step's `k`, `v` at `batch.out_cache_loc`
of layer `layer` in `pool`, then returns the attention output [num_tokens, num_heads,
head_dim]. `init_forward` runs once per step, before the layers, and may put metadata in
`batch.attn_state` (index tensors, planned wrappers, ...). Backends are selected by name
through `attention.create_backend`, which imports GPU code lazily.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from lmnb.runtime.forward_batch import ForwardBatch
from lmnb.runtime.memory import KVPool


class AttentionBackend(ABC):
    name: str = "base"
    # whether `forward` dequantizes an FP8 pool (KVPool.quantized: codes + per-row scales)
    reads_fp8_kv: bool = False

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float) -> None:
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale

    def init_forward(self, batch: ForwardBatch) -> None:
        """Per-step planning; default: nothing."""

    def warm_up(self, pool: KVPool, req_to_token: torch.Tensor) -> None:
        """Compile the kernel variants a later step may need that the decode graphs' capture
        does not (e.g. large extends), so no step of a serving run waits for a compiler;
        called once with the graphs' capture. Default: nothing."""

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
                batch: ForwardBatch, pool: KVPool) -> torch.Tensor:
        """q [T, H, D], k/v [T, KVH, D] for this step's tokens -> output [T, H, D]."""
