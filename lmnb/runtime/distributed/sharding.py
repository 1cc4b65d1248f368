"""Megatron-style sharding of the Llama-family decoder over `world` ranks.

Per layer, rank r holds:
    q/k/v (fused qkv_proj)  the rows of its query heads and of their KV heads
    o_proj                  the matching input columns; its partial output is all-reduced
    gate/up (gate_up_proj)  a slice of the intermediate columns
    down_proj               the matching input columns; all-reduced
Embeddings and norms are replicated (the hidden state is whole on every rank after each
all-reduce). The LM head lives on rank 0 only: logits come from rank 0.

Heads are split by KV group (a KV head and the query heads that read it), so grouped
attention stays local. When the group count does not divide by `world` the split is as
even as it can be, rank 0 (which also holds the LM head) taking the smaller part
(SmolLM2-135M's 3 groups over 2 ranks: 1 and 2). When `world` exceeds the KV head count,
each KV head is replicated on world/kv ranks that split its query heads.
Each rank's KV pool holds only its own KV heads.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from lmnb.errors import LmnbError
from lmnb.runtime.models.config import ModelConfig


@dataclass(frozen=True, slots=True)
class ShardPlan:
    rank: int
    world: int
    q_heads: tuple[int, int]     # [first, end) of the model's query heads
    kv_heads: tuple[int, int]    # [first, end) of its KV heads
    inter: tuple[int, int]       # [first, end) of the MLP's intermediate columns

    @property
    def num_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    def local_config(self, cfg: ModelConfig) -> ModelConfig:
        """The shape of this rank's model. Workers are built without an LM head."""
        return replace(cfg, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                       intermediate_size=self.inter[1] - self.inter[0],
                       tie_word_embeddings=cfg.tie_word_embeddings or self.rank != 0)


def _bounds(n: int, parts: int) -> list[int]:
    return [r * n // parts for r in range(parts + 1)]


def plan_shards(cfg: ModelConfig, world: int) -> list[ShardPlan]:
    """One plan per rank; a one-line LmnbError when the model cannot be split `world` ways."""
    h, kvh = cfg.num_heads, cfg.num_kv_heads
    group = h // kvh
    inter = _bounds(cfg.intermediate_size, world)
    if world <= kvh:
        g = _bounds(kvh, world)
        return [ShardPlan(r, world, (g[r] * group, g[r + 1] * group), (g[r], g[r + 1]),
                          (inter[r], inter[r + 1])) for r in range(world)]
    rep = world // kvh
    if world % kvh or group % rep:
        raise LmnbError(
            f"tp_size={world} cannot split this model's {kvh} KV heads x {group} query heads "
            f"each; use a tp_size that is at most {kvh} or a multiple of it dividing {h}")
    per = group // rep
    plans = []
    for r in range(world):
        kv, sub = divmod(r, rep)
        q0 = kv * group + sub * per
        plans.append(ShardPlan(r, world, (q0, q0 + per), (kv, kv + 1), (inter[r], inter[r + 1])))
    return plans


def shard_tensor(name: str, t: torch.Tensor, plan: ShardPlan, head_dim: int) -> torch.Tensor | None:
    """This rank's part of the HF-named tensor `name` (None: not held here)."""
    if name.endswith("lm_head.weight"):
        return t if plan.rank == 0 else None
    q = (plan.q_heads[0] * head_dim, plan.q_heads[1] * head_dim)
    kv = (plan.kv_heads[0] * head_dim, plan.kv_heads[1] * head_dim)
    for part, rng, dim in ((".q_proj.", q, 0), (".k_proj.", kv, 0), (".v_proj.", kv, 0),
                           (".o_proj.", q, 1), (".gate_proj.", plan.inter, 0),
                           (".up_proj.", plan.inter, 0), (".down_proj.", plan.inter, 1)):
        if part in name:
            return t.narrow(dim, rng[0], rng[1] - rng[0])
    return t


def shard_weights(weights: Iterable[tuple[str, torch.Tensor]], plan: ShardPlan, head_dim: int,
                  device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    """Slice each full tensor as it comes (one full tensor in memory at a time)."""
    for name, t in weights:
        part = shard_tensor(name, t, plan, head_dim)
        if part is not None:
            yield name, part.to(device).contiguous()


class RowParallelLinear(nn.Module):
    """A linear layer over this rank's input columns whose output is summed over the ranks.
    Keeps the parameter name `weight`, so HF names load into it unchanged."""

    def __init__(self, linear: nn.Linear, comm) -> None:
        super().__init__()
        if linear.bias is not None:
            raise LmnbError("row-parallel layers with a bias are not supported")
        self.weight, self.comm = linear.weight, comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        self.comm.all_reduce(out)
        return out


def parallelize(model: nn.Module, comm) -> nn.Module:
    """Swap o_proj and down_proj of every layer for their all-reducing versions."""
    for layer in model.layers:
        layer.self_attn.o_proj = RowParallelLinear(layer.self_attn.o_proj, comm)
        layer.mlp.down_proj = RowParallelLinear(layer.mlp.down_proj, comm)
    return model
