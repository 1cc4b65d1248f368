"""CUDA graphs for decode steps.

A decode step of a small model or a small batch is a few hundred short kernel launches
whose host cost exceeds their GPU time; replaying a captured graph issues them all at
once. One graph per batch size of a ladder (1, 2, 4, 8, 16, 24, 32, 48, 64, then steps
of 32 up to the largest running batch); a batch runs in the smallest graph that holds it,
padded with rows of sequence length 0 (the attention kernels write zeros for them) whose
KV goes to slot 0, the pool's padding slot.

Static inputs. All graphs read one device buffer; the graph of size n sees it as
[5, n] (input ids, positions, KV slots, req_to_token rows, sequence lengths), so one
host-to-device copy of 5n ints from a pinned buffer prepares a replay. The req_to_token
table and the KV pool are the runtime's own tensors, read in place. The attention
backend must offer `init_cuda_graph` / `init_forward_graph` (the triton backend does):
its decode plan then depends only on the batch size and the context length.

Outputs. Graphs share one memory pool, so the logits of a replay live until the next
replay: the caller consumes them before running another step.
"""
from __future__ import annotations

import os

import torch

from lmnb.runtime.forward_batch import ForwardBatch, Mode

_FIELDS = 5  # input_ids, positions, out_cache_loc, req_pool_indices, seq_lens


def graph_batch_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, ... capped by (and ending at) max_bs."""
    ladder = [1, 2, 4, 8, 16, 24, 32, 48, 64]
    while ladder[-1] < max_bs:
        ladder.append(ladder[-1] + 32)
    sizes = [b for b in ladder if b < max_bs]
    return sizes + [max_bs]


def cuda_graph_enabled(default: bool = True) -> bool:
    """`LMNB_CUDA_GRAPH=0` turns decode graphs off (eager decode everywhere)."""
    v = os.environ.get("LMNB_CUDA_GRAPH")
    return default if v is None else v.strip().lower() not in ("0", "false", "no", "off")


_CAPTURE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The one side stream graphs are captured on, per device and process: cuBLAS keeps a
    workspace (32 MiB on Hopper) for every stream it has run on and never frees it, so a
    stream per capture would leave 0.5 GiB behind each runtime."""
    s = _CAPTURE_STREAMS.get(device)
    if s is None:
        s = _CAPTURE_STREAMS[device] = torch.cuda.Stream(device)
    return s


class DecodeGraphRunner:
    """Captures the model's decode step once per ladder size and replays it."""

    def __init__(self, model, backend, pool, req_to_token: torch.Tensor, max_bs: int,
                 max_context: int) -> None:
        self.model, self.backend, self.pool, self.table = model, backend, pool, req_to_token
        self.device = req_to_token.device
        self.sizes = graph_batch_sizes(max_bs)
        self.max_bs = self.sizes[-1]
        n = _FIELDS * self.max_bs
        self._host = torch.zeros(n, dtype=torch.int64, pin_memory=True)
        self._host_np = self._host.numpy()
        self._dev = torch.zeros(n, dtype=torch.int64, device=self.device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._out: dict[int, torch.Tensor] = {}
        self._mempool = None
        self._copied = torch.cuda.Event()  # the pinned buffer is free again once it fired

        backend.init_cuda_graph(self.max_bs, max_context, self.device)

    def can_run(self, bs: int) -> bool:
        return bs <= self.max_bs

    def padded_size(self, bs: int) -> int:
        return next(s for s in self.sizes if s >= bs)

    # ------------------------------------------------------------------ capture
    def capture(self) -> None:
        """Capture every ladder size, largest first (smaller graphs reuse its memory)."""
        with torch.inference_mode():
            for bs in reversed(self.sizes):
                if bs not in self._graphs:
                    self._capture(bs)
            self.backend.warm_up(self.pool, self.table)
        torch.cuda.synchronize(self.device)

    def _static_batch(self, bs: int) -> ForwardBatch:
        ids, pos, loc, rows, seq = self._dev[: _FIELDS * bs].view(_FIELDS, bs)
        ones = torch.ones(bs, dtype=torch.int64, device=self.device)
        return ForwardBatch(
            mode=Mode.DECODE, input_ids=ids, positions=pos, out_cache_loc=loc,
            req_pool_indices=rows, seq_lens=seq, prefix_lens=pos, extend_lens=ones,
            extend_starts=torch.arange(bs, device=self.device), req_to_token=self.table,
            logits_rows=None)

    def _capture(self, bs: int) -> None:
        self._dev.zero_()  # all rows padding: length 0, slot 0
        batch = self._static_batch(bs)
        self.backend.init_forward_graph(batch)
        stream = capture_stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up: compiles kernels, creates handles
            for _ in range(2):
                self.model.forward_planned(batch, self.backend, self.pool)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._mempool):
            out = self.model.forward_planned(batch, self.backend, self.pool)
        self._mempool = graph.pool()
        self._graphs[bs], self._out[bs] = graph, out

    # ------------------------------------------------------------------ replay
    def replay(self, input_ids: list[int], positions: list[int], out_cache_loc: torch.Tensor,
               req_pool_indices: list[int], fill: tuple | None = None) -> torch.Tensor:
        """One decode step; returns fp32 logits [bs, vocab] (valid until the next replay).
        Each request's sequence length is its position + 1. `fill` = (rows, token ids on
        the device) overwrites those rows' input ids (tokens still being sampled)."""
        bs = len(input_ids)
        if not self._graphs:
            self.capture()
        n = self.padded_size(bs)
        self._copied.synchronize()
        h = self._host_np[: _FIELDS * n].reshape(_FIELDS, n)
        h[:, bs:] = 0
        h[0, :bs] = input_ids
        h[1, :bs] = positions
        h[2, :bs] = out_cache_loc.cpu().numpy()
        h[3, :bs] = req_pool_indices
        h[4, :bs] = h[1, :bs] + 1
        self._dev[: _FIELDS * n].copy_(self._host[: _FIELDS * n], non_blocking=True)
        self._copied.record()
        if fill is not None:
            self._dev[fill[0]] = fill[1]   # row 0 of the [5, n] view: the input ids
        self._graphs[n].replay()
        return self._out[n][:bs]

    def release(self) -> None:
        """Free the graphs, their outputs and their private memory pool."""
        self._copied.synchronize()
        self._graphs.clear()
        self._out.clear()
        self._mempool = None
        self.model = self.backend = self.pool = self.table = None

    def time_replay(self, bs: int, iters: int = 50) -> float:
        """Seconds per replay of the graph for `bs` on padding rows only (length 0, slot 0:
        no request's KV is read or written): the step's GPU floor, for benchmarks."""
        if not self._graphs:
            self.capture()
        n = self.padded_size(bs)
        self._copied.synchronize()
        self._dev[: _FIELDS * n].zero_()
        graph = self._graphs[n]
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
