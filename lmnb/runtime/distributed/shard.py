"""One rank's part of the model and the step it runs: the same code on rank 0 and on the
workers, so every rank builds the same forward batch and issues the same collectives in
the same order.

CUDA graphs (`LMNB_TP_CUDA_GRAPH=1`): decode steps replay graphs that capture the
all-reduces. NOT VERIFIED: written without a multi-GPU machine, so it is off unless asked
for; the eager path is what CI runs (gloo) and what CUDA runs by default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from lmnb.runtime.attention import create_backend
from lmnb.runtime.cuda_graph import DecodeGraphRunner
from lmnb.runtime.distributed.protocol import StepMessage
from lmnb.runtime.distributed.sharding import ShardPlan, parallelize, shard_weights
from lmnb.runtime.forward_batch import ForwardBatch, Mode
from lmnb.runtime.memory import KVPool, ReqToTokenPool
from lmnb.runtime.model_runner import replay_positions
from lmnb.runtime.models.llama import LlamaForCausalLM
from lmnb.runtime.sampler import to_device


def tp_graphs_wanted(device: torch.device, cuda_graph: bool | None) -> bool:
    """Graphs under TP only when asked for with LMNB_TP_CUDA_GRAPH=1 (unverified)."""
    asked = os.environ.get("LMNB_TP_CUDA_GRAPH", "0").strip().lower() in ("1", "true", "yes", "on")
    return device.type == "cuda" and asked and cuda_graph is not False


@dataclass
class Shard:
    plan: ShardPlan
    model: LlamaForCausalLM
    backend: object
    pool: KVPool | None = None
    req_pool: ReqToTokenPool | None = None
    graphs: DecodeGraphRunner | None = None
    use_graphs: bool = False

    @classmethod
    def load(cls, lm, plan: ShardPlan, comm, device: torch.device, dtype: torch.dtype,
             attention: str | None) -> Shard:
        """Build this rank's model and load its slice of the spec's weights. Dummy weights
        are generated whole on the device from the shared seed (identical on every rank)
        and sliced; checkpoint tensors are read on the CPU and only the slice moves."""
        cfg = lm.config
        model = parallelize(LlamaForCausalLM(plan.local_config(cfg), dtype, device), comm)
        src = device if lm.name.startswith("dummy:") else torch.device("cpu")
        model.load_weights(shard_weights(lm.weights(src, dtype), plan, cfg.head_dim, device))
        model.eval()
        backend = create_backend(attention, device.type, num_heads=plan.num_heads,
                                 num_kv_heads=plan.num_kv_heads, head_dim=cfg.head_dim,
                                 scale=cfg.head_dim ** -0.5)
        return cls(plan, model, backend)

    def allocate(self, pool_tokens: int, req_pool: ReqToTokenPool) -> None:
        cfg = self.model.cfg
        self.pool = KVPool(pool_tokens, cfg.num_layers, self.plan.num_kv_heads, cfg.head_dim,
                           self.model.embed_tokens.weight.dtype, req_pool.table.device)
        self.req_pool = req_pool

    def run(self, msg: StepMessage, fill_tokens: torch.Tensor | None,
            logits_rows: list[int]) -> torch.Tensor:
        """The step's forward; logits of `logits_rows` (rank 0) or of no row (workers)."""
        table = self.req_pool.table
        dev = table.device
        fill = None if fill_tokens is None else (to_device(msg.ahead_at, dev), fill_tokens)
        if msg.use_graph:
            return self._replay(msg, fill, logits_rows)
        mode = Mode.DECODE if msg.is_decode else Mode.EXTEND
        fb = ForwardBatch.build(mode, msg.input_ids, msg.req_pool_indices, msg.prefix_lens,
                                msg.extend_lens, msg.out_cache_loc, table, logits_rows)
        if fill is not None:
            fb.input_ids[fill[0]] = fill[1]
        return self.model(fb, self.backend, self.pool)

    # -- CUDA graphs (unverified, see the module docstring) -------------------------
    def graph_fits(self, num_tokens: int) -> bool:
        if not self.use_graphs:
            return False
        if self.graphs is None:
            rp = self.req_pool
            self.graphs = DecodeGraphRunner(self.model, self.backend, self.pool, rp.table,
                                            max(1, rp.max_reqs - 1), rp.max_context)
        return self.graphs.can_run(num_tokens)

    def _replay(self, msg: StepMessage, fill, logits_rows: list[int]) -> torch.Tensor:
        self.graph_fits(len(msg.input_ids))   # workers create the runner on first use
        positions, req_rows = replay_positions(msg.is_decode, msg.prefix_lens, msg.extend_lens,
                                               msg.req_pool_indices)
        logits = self.graphs.replay(msg.input_ids, positions, msg.out_cache_loc, req_rows, fill)
        n = len(msg.input_ids)
        if len(logits_rows) == n and logits_rows == list(range(n)):
            return logits
        return logits[to_device(logits_rows, logits.device)]

    def release(self) -> None:
        if self.graphs is not None:
            self.graphs.release()
        self.graphs = self.model = self.backend = self.pool = self.req_pool = None
