"""Rank 0's model runner under tensor parallelism: the same `run(batch, ahead_tokens)` and
`release()` as `ModelRunner`, so the engine, scheduler and radix cache (all on rank 0, in
the user's process) are unchanged.

A step: lay the batch out on the host (`step_layout`), broadcast it to the workers as a
compact message with the table writes since the step before, broadcast the run-ahead
tokens still on the device (if any), then every rank runs its shard; rank 0 returns the
logits.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from lmnb.errors import EngineError
from lmnb.runtime.distributed.comm import Comm, master_store
from lmnb.runtime.distributed.protocol import JournalingReqToTokenPool, StepMessage, stop_header
from lmnb.runtime.distributed.shard import Shard, tp_graphs_wanted
from lmnb.runtime.distributed.sharding import plan_shards
from lmnb.runtime.distributed.worker import WorkerArgs
from lmnb.runtime.distributed.workers import WorkerGroup
from lmnb.runtime.model_runner import StepOutput, graph_sized, step_layout
from lmnb.runtime.sampler import to_device
from lmnb.runtime.scheduler import ScheduledBatch

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class TPModelRunner:
    def __init__(self, shard: Shard, req_pool: JournalingReqToTokenPool, comm: Comm,
                 workers: WorkerGroup, store) -> None:
        self.shard, self.comm, self.workers, self._store = shard, comm, workers, store
        self.model, self.backend, self.pool, self.req_pool = shard.model, shard.backend, shard.pool, req_pool
        self.tp_size = comm.world
        self._broken = False      # a step failed half-way: the workers are out of step
        workers.on_death = comm.abort

    @property
    def worker_pids(self) -> list[int]:
        return self.workers.pids if self.workers is not None else []

    def run(self, sb: ScheduledBatch, ahead_tokens: torch.Tensor | None = None) -> StepOutput:
        self.workers.check()
        lay = step_layout(sb)
        n = len(lay.input_ids)
        use_graph = graph_sized(sb.is_decode, n) and self.shard.graph_fits(n)
        msg = StepMessage(sb.is_decode, use_graph, lay.input_ids, sb.out_cache_loc.to(torch.int64),
                          [r.req_pool_idx for r in sb.reqs], list(sb.prefix_lens), list(sb.lens),
                          lay.ahead_at)
        if lay.ahead_at and ahead_tokens is None:
            raise RuntimeError("a request runs ahead but the step before sampled nothing")
        header, body = msg.encode(self.req_pool.take_writes())
        try:
            self.comm.broadcast_host(header)
            self.comm.broadcast_host(body)
            fill = None
            if lay.ahead_at:
                dev = self.req_pool.table.device
                fill = ahead_tokens[to_device(lay.ahead_src, dev)].to(torch.int64)
                self.comm.broadcast_device(fill)
            logits = self.shard.run(msg, fill, lay.rows)
        except BaseException as e:
            self._broken = True
            if isinstance(e, EngineError):
                raise
            if self.workers.wait_for_death(5.0):   # (returns at once when one is seen dead)
                raise self.workers.lost_error() from None
            raise
        return StepOutput(logits, lay.sample_rows, lay.logprob_rows, lay.draft_rows)

    def explain_failure(self, e: BaseException) -> BaseException:
        """An error that stopped the engine, as the worker death behind it when one died."""
        if not isinstance(e, EngineError) and self.workers is not None and self.workers.wait_for_death(5.0):
            return self.workers.lost_error()
        return e

    def release(self) -> None:
        """Stop the workers (STOP when they are in step, else terminate) and drop the shard."""
        if self.workers is None:
            return
        if not self._broken and self.workers.died is None and self.workers.all_alive():
            try:
                self.comm.broadcast_host(stop_header())
            except Exception:  # noqa: BLE001,S110 - they are terminated below
                pass
        self.workers.stop()
        self.comm.close()
        self.shard.release()
        self.workers = self.comm = self.shard = self._store = None
        self.model = self.backend = self.pool = self.req_pool = None


def start_tensor_parallel(lm, rc, context_len: int) -> TPModelRunner:
    """Spawn ranks 1..N-1, load every rank's shard (each from the spec itself, in parallel),
    size and allocate the KV pools, and return rank 0's runner."""
    world = rc.tp_size
    cfg = lm.config
    plans = plan_shards(cfg, world)      # an unsplittable model fails before any spawn
    devices = _devices(rc.device, world)
    dtype = rc.torch_dtype
    threads = 2 if devices[0].type == "cuda" else max(1, torch.get_num_threads() // world)
    store = master_store(world)
    workers = WorkerGroup([WorkerArgs(lm.name, r, world, store.port, str(devices[r]), _DTYPE_NAMES[dtype],
                                      rc.attention, threads) for r in range(1, world)])
    try:
        workers.expect("hello")
        comm = Comm(store, 0, world, devices[0])
        shard = Shard.load(lm, plans[0], comm, devices[0], dtype, rc.attention)
        workers.expect("loaded")
        widest = replace(cfg, num_kv_heads=max(p.num_kv_heads for p in plans))
        pool_tokens = rc.pool_tokens(widest, dtype)
        req_pool = JournalingReqToTokenPool(rc.max_running_requests + 1, context_len + 1, devices[0])
        graphs = tp_graphs_wanted(devices[0], rc.cuda_graph) and hasattr(shard.backend, "init_forward_graph")
        comm.broadcast_host(torch.tensor([pool_tokens, req_pool.max_reqs, req_pool.max_context,
                                          int(graphs)], dtype=torch.int64))
        shard.allocate(pool_tokens, req_pool)
        shard.use_graphs = graphs
        workers.expect("ready")
    except BaseException:
        workers.stop(grace=0.0)
        raise
    return TPModelRunner(shard, req_pool, comm, workers, store)


def _devices(device: str, world: int) -> list[torch.device]:
    d = torch.device(device)
    if d.type != "cuda":
        return [d] * world
    base = d.index or 0
    return [torch.device("cuda", base + r) for r in range(world)]
