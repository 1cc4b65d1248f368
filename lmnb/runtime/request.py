"""A generation request as the engine sees it.

Token layout: fill_ids = input_ids + output_ids. Positions 0..kv_len-1 have KV in the
pool (their slots are req_to_token[req_pool_idx, :kv_len]); of those, 0..cache_len-1 are
owned by the radix cache (the locked path ending at last_node) and cache_len..kv_len-1 by
the request itself. A step computes fill_ids[kv_len:kv_len+n]; when that reaches the end
of fill_ids the request samples its next token.
"""
from __future__ import annotations

import enum
import itertools
import queue
from dataclasses import dataclass, field

import torch

from lmnb.runtime.sampling_params import SamplingParams

_rid_counter = itertools.count()


def new_rid() -> str:
    return f"r{next(_rid_counter)}"


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Req:
    rid: str
    input_ids: list[int]
    params: SamplingParams
    stream: bool = False
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: dict | None = None
    # KV bookkeeping (engine thread only)
    req_pool_idx: int | None = None
    kv_len: int = 0
    cache_len: int = 0
    last_node: object = None
    prefix_slots: object = None      # matched cache slots, between match and admission
    prompt_leader: Req | None = None   # n > 1: admitted once this sample's prompt is cached
    cached_tokens: int = -1          # prompt tokens served from the cache at first admission
    computed_tokens: int = 0         # tokens this request really ran through the model
    # sampling / decoding state
    generator: torch.Generator | None = None
    guide: object = None             # constrained.GuideCursor or None
    penalty: object = None           # penalties.PenaltyState while penalties apply
    output_version: int = 0          # bumped when the host rewrites output_ids (jump-forward)
    detok: object = None             # IncrementalDetokenizer
    text: str = ""
    streamed_len: int = 0            # chars of text already sent as deltas
    streamed_tokens: int = 0         # output tokens already sent with deltas
    stop_scan_from: int = 0
    forced_spans: list = field(default_factory=list)   # (start, end) char spans of jumped text
    input_logprobs: list = field(default_factory=list)   # (token_id, logprob) for prompt tokens
    pending_prompt_lps: list = field(default_factory=list)  # gathered over prompt chunks
    output_logprobs: list = field(default_factory=list)  # (token_id, logprob)
    output_top_logprobs: list = field(default_factory=list)
    decode_steps: int = 0
    jump_tokens: int = 0
    retractions: int = 0
    created: float = 0.0
    first_token_time: float | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    abort_requested: bool = False
    # run ahead (runtime/run_ahead.py): output_ids[-1] is a placeholder for the token in
    # row `ahead_row` of the step in flight; the next step reads it from the device
    ahead: bool = False
    ahead_row: int = 0
    mm: object = None                # multimodal.MultimodalInputs: the prompt's images
    # speculative decoding (runtime/speculative.py): drafting state, made at the first look
    spec: object = None

    @property
    def fill_ids(self) -> list[int]:
        return self.input_ids + self.output_ids

    def fill_slice(self, start: int, end: int) -> list[int]:
        """fill_ids[start:end] without building the whole list."""
        n_in = len(self.input_ids)
        if start >= n_in:
            return self.output_ids[start - n_in : end - n_in]
        if end <= n_in:
            return self.input_ids[start:end]
        return self.input_ids[start:] + self.output_ids[: end - n_in]

    @property
    def fill_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def pending(self) -> int:
        return self.fill_len - self.kv_len

    @property
    def logprob_from(self) -> int:
        """First prompt position whose logits are needed for prompt logprobs, or -1."""
        s = self.params.logprob_start_len
        if s < 0 or self.input_logprobs:
            return -1
        return max(s, 1) - 1

    def finished(self) -> bool:
        return self.status is Status.FINISHED
