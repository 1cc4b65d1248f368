"""What rank 0 tells the workers each step: one fixed header and one int64 body.

    header [8]  kind, is_decode, use_graph, n_tokens, batch size, n_writes, n_fill, body length
    body        input_ids [n_tokens]  (0 where the token comes from the device)
                out_cache_loc [n_tokens]
                req_pool_indices, prefix_lens, extend_lens [batch size each]
                ahead_at [n_fill]     input positions filled with the broadcast device tokens
                table writes: rows, cols, slots [n_writes each]

The workers keep their own copy of the req_to_token table; rank 0's scheduler writes go
into a journal (`JournalingReqToTokenPool`) and reach the workers with the next step, so
a decode step carries one write per request rather than whole table rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmnb.runtime.memory import ReqToTokenPool

STEP, STOP = 1, 2
HEADER = 8


@dataclass
class StepMessage:
    is_decode: bool
    use_graph: bool
    input_ids: list[int]
    out_cache_loc: torch.Tensor          # int64, CPU
    req_pool_indices: list[int]
    prefix_lens: list[int]
    extend_lens: list[int]
    ahead_at: list[int]

    def encode(self, writes: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols, slots = writes
        n, bs = len(self.input_ids), len(self.req_pool_indices)
        lists = torch.tensor(self.input_ids, dtype=torch.int64)
        small = torch.tensor(self.req_pool_indices + self.prefix_lens + self.extend_lens + self.ahead_at,
                             dtype=torch.int64)
        body = torch.cat([lists, self.out_cache_loc.to(torch.int64).reshape(-1), small, rows, cols, slots])
        header = torch.tensor([STEP, int(self.is_decode), int(self.use_graph), n, bs, rows.numel(),
                               len(self.ahead_at), body.numel()], dtype=torch.int64)
        return header, body

    @classmethod
    def decode(cls, header: torch.Tensor, body: torch.Tensor):
        """-> (message, (rows, cols, slots) table writes)."""
        _, dec, graph, n, bs, nw, nf, _ = header.tolist()
        parts = body.split([n, n, bs, bs, bs, nf, nw, nw, nw])
        msg = cls(bool(dec), bool(graph), parts[0].tolist(), parts[1], parts[2].tolist(),
                  parts[3].tolist(), parts[4].tolist(), parts[5].tolist())
        return msg, (parts[6], parts[7], parts[8])


def stop_header() -> torch.Tensor:
    h = torch.zeros(HEADER, dtype=torch.int64)
    h[0] = STOP
    return h


class JournalingReqToTokenPool(ReqToTokenPool):
    """Rank 0's table: every write is also kept until `take_writes` hands it on."""

    def __init__(self, max_reqs: int, max_context: int, device: torch.device) -> None:
        super().__init__(max_reqs, max_context, device)
        self._journal: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def write_many(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        super().write_many(rows, cols, slots)
        if slots.numel():
            self._journal.append((rows.to(torch.int64).clone(), cols.to(torch.int64).clone(),
                                  slots.to(torch.int64).clone()))

    def write(self, idx: int, start: int, slots: torch.Tensor) -> None:
        super().write(idx, start, slots)
        n = slots.numel()
        if n:
            self._journal.append((torch.full((n,), idx, dtype=torch.int64),
                                  torch.arange(start, start + n, dtype=torch.int64),
                                  slots.to(torch.int64).clone()))

    def take_writes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        j, self._journal = self._journal, []
        if not j:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty, empty
        return tuple(torch.cat(parts) for parts in zip(*j))


def apply_writes(pool: ReqToTokenPool, writes: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """A worker replays rank 0's table writes; where a position was written twice the
    later write wins (an indexed store with repeated indices keeps an arbitrary one)."""
    rows, cols, slots = writes
    if not slots.numel():
        return
    keys = (rows * pool.max_context + cols).numpy()
    _, first_from_end = np.unique(keys[::-1], return_index=True)
    keep = torch.from_numpy(len(keys) - 1 - first_from_end)
    pool.write_many(rows[keep], cols[keep], slots[keep])
