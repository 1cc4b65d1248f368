"""What one model step computes: the batch layout shared by the model and the attention
backends.

Index arithmetic (per request i, in batch order):
    positions prefix_lens[i] .. seq_lens[i]-1 are computed this step
    (extend_lens[i] = seq_lens[i] - prefix_lens[i]; 1 for every request in DECODE);
    their new K/V go to out_cache_loc[extend_starts[i] : extend_starts[i] + extend_lens[i]];
    the K/V of all positions 0 .. seq_lens[i]-1 are read through
    req_to_token[req_pool_indices[i], :seq_lens[i]] (this already includes the new slots).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch


class Mode(Enum):
    EXTEND = "extend"
    DECODE = "decode"


@dataclass
class ForwardBatch:
    mode: Mode
    input_ids: torch.Tensor          # [num_tokens] int64, device
    positions: torch.Tensor          # [num_tokens] int64, device
    out_cache_loc: torch.Tensor      # [num_tokens] int64, device
    req_pool_indices: torch.Tensor   # [bs] int64, device
    seq_lens: torch.Tensor           # [bs] int64, device
    prefix_lens: torch.Tensor        # [bs] int64, device
    extend_lens: torch.Tensor        # [bs] int64, device
    extend_starts: torch.Tensor      # [bs] int64, device (exclusive cumsum of extend_lens)
    req_to_token: torch.Tensor       # [max_reqs, max_context] int32, device
    # host copies for backends that plan on CPU (torch, flashinfer)
    seq_lens_cpu: list[int] = field(default_factory=list)
    prefix_lens_cpu: list[int] = field(default_factory=list)
    extend_lens_cpu: list[int] = field(default_factory=list)
    # rows of the hidden states whose logits are needed (last token per request, plus
    # prompt-logprob ranges), in order
    logits_rows: torch.Tensor | None = None
    attn_state: object = None        # backend-specific metadata from init_forward

    @property
    def batch_size(self) -> int:
        return self.seq_lens.numel()

    @classmethod
    def build(cls, mode: Mode, input_ids: list[int], req_pool_indices: list[int],
              prefix_lens: list[int], extend_lens: list[int], out_cache_loc: torch.Tensor,
              req_to_token: torch.Tensor, logits_rows: list[int]) -> ForwardBatch:
        dev = req_to_token.device
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        positions = torch.cat([torch.arange(p, s) for p, s in zip(prefix_lens, seq_lens)])
        starts, acc = [], 0
        for e in extend_lens:
            starts.append(acc)
            acc += e

        def t(x):
            return torch.tensor(x, dtype=torch.int64).to(dev, non_blocking=True)

        return cls(
            mode=mode, input_ids=t(input_ids), positions=positions.to(dev, non_blocking=True),
            out_cache_loc=out_cache_loc.to(torch.int64).to(dev, non_blocking=True),
            req_pool_indices=t(req_pool_indices),
            seq_lens=t(seq_lens), prefix_lens=t(prefix_lens), extend_lens=t(extend_lens),
            extend_starts=t(starts), req_to_token=req_to_token, seq_lens_cpu=seq_lens,
            prefix_lens_cpu=list(prefix_lens), extend_lens_cpu=list(extend_lens),
            logits_rows=t(logits_rows),
        )
