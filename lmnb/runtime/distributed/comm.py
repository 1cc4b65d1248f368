"""Process groups of one tensor-parallel runtime.

Two groups over one TCP store (port picked by the OS, so nothing is fixed):
    ctrl    gloo, CPU tensors: rank 0's step messages (the batch layout) to the workers
    device  the collectives of the model: NCCL on CUDA, the gloo group itself on CPU

The groups are objects of this runtime, not torch.distributed's process-wide default
group, so a process may hold several runtimes one after the other (or at once) and user
code that uses torch.distributed is left alone.

Rank 0 gives every collective a timeout (`LMNB_TP_TIMEOUT`, seconds, default 300) so a
worker that hangs surfaces as an error; a worker that dies closes its sockets and gloo
fails at once. Workers wait for the next step without a limit (a notebook may sit idle
for hours). NVLink multicast stays off in every process (`multicast_off`).
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

IDLE = datetime.timedelta(days=365)    # a worker waiting for its next step


def multicast_off() -> None:
    """NVLink SHARP / symmetric-memory multicast off: must be set before NCCL starts."""
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"


def step_timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("LMNB_TP_TIMEOUT", "300")))


def master_store(world: int) -> dist.TCPStore:
    """Rank 0's store on a free localhost port (`.port` says which)."""
    return dist.TCPStore("127.0.0.1", 0, world, True, timeout=datetime.timedelta(seconds=120),
                         wait_for_workers=False)


def worker_store(port: int, world: int) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, world, False, timeout=datetime.timedelta(seconds=120))


class Comm:
    """The two groups of one rank, and the few collectives the runtime uses."""

    def __init__(self, store, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device
        self.timeout = step_timeout() if rank == 0 else IDLE
        self.ctrl = dist.ProcessGroupGloo(dist.PrefixStore("ctrl", store), rank, world, self.timeout)
        if device.type == "cuda":
            self.dev = self._nccl(store, rank, world)
        else:
            self.dev = self.ctrl

    def _nccl(self, store, rank: int, world: int):
        # NOT RUN in CI (no multi-GPU machine was available when this was written)
        multicast_off()
        torch.cuda.set_device(self.device)
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = step_timeout()
        return dist.ProcessGroupNCCL(dist.PrefixStore("nccl", store), rank, world, opts)

    @property
    def is_nccl(self) -> bool:
        return self.dev is not self.ctrl

    # -- collectives ----------------------------------------------------------
    def broadcast_host(self, t: torch.Tensor) -> None:
        """Rank 0's CPU tensor `t` into every rank's `t` (same shape and dtype)."""
        self.ctrl.broadcast(t, 0, self.timeout).wait()

    def broadcast_device(self, t: torch.Tensor) -> None:
        """Rank 0's device tensor into every rank's; on NCCL the host does not wait."""
        if self.is_nccl:
            self.dev.broadcast(t, 0).wait()
        else:
            self.ctrl.broadcast(t, 0, self.timeout).wait()

    def all_reduce(self, t: torch.Tensor) -> None:
        """In-place sum over the ranks (after o_proj and down_proj)."""
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.SUM
        if not self.is_nccl:
            opts.timeout = self.timeout
        self.dev.allreduce([t], opts).wait()

    def abort(self) -> None:
        """Best effort: make collectives in flight fail (NCCL) after a peer died."""
        if self.is_nccl and hasattr(self.dev, "abort"):
            try:
                self.dev.abort()
            except Exception:  # noqa: BLE001,S110 - the group is being torn down anyway
                pass

    def close(self) -> None:
        if self.is_nccl and hasattr(self.dev, "shutdown"):
            try:
                self.dev.shutdown()
            except Exception:  # noqa: BLE001,S110 - closing a group that may be broken
                pass
        self.ctrl = self.dev = None
