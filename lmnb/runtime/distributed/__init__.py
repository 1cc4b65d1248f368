"""Tensor parallelism: `Runtime(..., tp_size=N)` runs the model over N processes.

    comm.py       the process groups (gloo for messages; NCCL or gloo for the model)
    sharding.py   which slice of each weight a rank holds; the all-reducing layers
    protocol.py   the per-step message from rank 0 and the req_to_token journal
    shard.py      one rank's model, KV pool and step (the same code on every rank)
    worker.py     the worker process (ranks 1..N-1)
    workers.py    rank 0's handle on the worker processes
    tp_runner.py  rank 0's model runner (the engine's `run(batch, ahead_tokens)`)

Rank 0 is the user's process: scheduler, radix cache, sampling and detokenisation stay
there. Nothing here is imported unless tp_size > 1.
"""
