"""A tensor-parallel worker process (ranks 1..N-1).

Start-up, each stage answered on the pipe to rank 0 ("hello", "loaded", "ready", or
("error", one line)): join the store and groups, load this rank's shard from the spec,
allocate the KV pool and req_to_token table rank 0 sized, then loop: receive a step
message, replay rank 0's table writes, run the shard's forward, until STOP.

The worker exits when its parent does (a thread watches the parent pid; a dead rank 0
also closes the gloo sockets, which fails the pending receive).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WorkerArgs:
    spec: str
    rank: int
    world: int
    port: int
    device: str
    dtype: str
    attention: str | None
    threads: int


def _watch_parent(ppid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != ppid:
            os._exit(0)


def worker_main(args: WorkerArgs, conn) -> None:
    from lmnb.runtime.distributed.comm import multicast_off

    multicast_off()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    torch.set_num_threads(max(1, args.threads))
    stage = "start"
    try:
        conn.send("hello")
        stage = "join"
        shard, comm = _start(args, conn)
        stage = "run"
        _loop(shard, comm)
    except BaseException as e:  # noqa: BLE001 - rank 0 reports it as one line
        from lmnb.runtime.engine import error_line

        try:
            conn.send(("error", f"{stage}: {error_line(e)}"))
        except OSError:
            pass
        os._exit(1)
    conn.close()
    # skip interpreter teardown: destroying the process groups and CUDA state at exit can
    # stall for seconds, and nothing here needs flushing
    os._exit(0)


def _start(args: WorkerArgs, conn):
    from lmnb.runtime import loader
    from lmnb.runtime.distributed.comm import Comm, worker_store
    from lmnb.runtime.distributed.shard import Shard
    from lmnb.runtime.distributed.sharding import plan_shards
    from lmnb.runtime.memory import ReqToTokenPool
    from lmnb.runtime.runtime_config import _DTYPES

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    comm = Comm(worker_store(args.port, args.world), args.rank, args.world, device)
    lm = loader.load(args.spec)
    plan = plan_shards(lm.config, args.world)[args.rank]
    shard = Shard.load(lm, plan, comm, device, _DTYPES[args.dtype], args.attention)
    conn.send("loaded")
    sizes = torch.zeros(4, dtype=torch.int64)
    comm.broadcast_host(sizes)                 # pool tokens, table rows, table columns, graphs
    pool_tokens, max_reqs, max_context, graphs = sizes.tolist()
    shard.allocate(pool_tokens, ReqToTokenPool(max_reqs, max_context, device))
    shard.use_graphs = bool(graphs)     # rank 0 decided
    conn.send("ready")
    return shard, comm


def _loop(shard, comm) -> None:
    from lmnb.runtime.distributed.protocol import HEADER, STOP, StepMessage, apply_writes

    header = torch.zeros(HEADER, dtype=torch.int64)
    dev = shard.req_pool.table.device
    while True:
        comm.broadcast_host(header)
        if int(header[0]) == STOP:
            return
        body = torch.zeros(int(header[7]), dtype=torch.int64)
        comm.broadcast_host(body)
        msg, writes = StepMessage.decode(header, body)
        apply_writes(shard.req_pool, writes)
        fill = None
        if msg.ahead_at:
            fill = torch.zeros(len(msg.ahead_at), dtype=torch.int64, device=dev)
            comm.broadcast_device(fill)
        shard.run(msg, fill, [])
