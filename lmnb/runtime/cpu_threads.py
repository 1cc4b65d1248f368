"""Intra-op threads on the CPU: a runtime's multi-threaded torch work runs on its engine thread.

torch parallelises CPU ops with OpenMP (libgomp). Every thread that starts a parallel
region gets a team of worker threads of its own, and once libgomp manages more threads
than the process has CPUs it stops letting idle workers spin: each op then waits for its
workers to be woken from sleep. Measured on a 2-core machine (smollm2's int4 GEMVs, one
decode step's worth): 8.8 ms run from the main thread; 23 ms from a second thread once the
main thread had run a single multi-threaded op (two teams: three workers on two CPUs); 8.9 ms
from a second thread when it had not. That is why decode steps had been run on one thread.

So a CPU runtime loads its model with one intra-op thread on the calling thread (which then
never starts a team), and its engine thread runs every step with the thread count the
caller had (`torch.get_num_threads()` when the runtime is created). Multi-threaded torch
work of the caller's own (an HF model in the same notebook, say) makes a second team and
slows the engine's small ops again; see docs/cpu.md.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def serial_caller(device: torch.device) -> Iterator[int]:
    """Run the block with one intra-op thread when `device` is the CPU; yields the
    thread count the caller had (what the engine thread should use)."""
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n == 1:
        yield n
        return
    torch.set_num_threads(1)
    try:
        yield n
    finally:
        torch.set_num_threads(n)


def use_threads(n: int) -> None:
    """Set the calling thread's intra-op thread count (the engine thread, before its
    first step)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
